#!/usr/bin/env python3
"""Training throughput on the machine at hand: images/s, FLOPs, GFLOP/s against the GEMM peak, and where
the time goes (data, forward, backward, optimiser, EMA), for each speed lever of the training step.

Not a test: run it alone (anything else on the cores skews it), e.g.
    python benchmarks/bench_training.py --data_folder data/mnist_image_folder
Writes benchmarks/results/bench_training_<device>.{json,md}.
"""
import argparse
from typing import Sequence
import sys
from pathlib import Path


from bench_common import StepTimer, gemm_peak
from ddpm_mnist.cli.arguments import ArgumentParser
from ddpm_mnist.training.step import BASELINE, DEFAULT_LEVERS
from ddpm_mnist.utils import write_json


def _chain(*steps):
    """Rows of the lever table: 'baseline', then each '+' row adds one lever to the row above it."""
    rows, levers = {'baseline': BASELINE}, dict(BASELINE)
    for name, change in steps:
        levers = {**levers, **change}
        rows[name] = levers
    return rows


# One training setup per row. 'baseline' is the step as the Trainer ran it before any lever (PNG decoding in 2
# DataLoader workers, accelerate's bf16 autocast, library attention, for-loop Adam and EMA, glibc's allocator).
VARIANTS = _chain(('+ cached data', dict(data='cached')),
                  ('+ keep freed memory', dict(keep_freed_memory=True)),
                  ('+ channels_last', dict(channels_last=True)),
                  ('+ fast attention', dict(fast_linear_attention=True, fast_full_attention=True)),
                  ('+ foreach EMA', dict(ema_foreach=True)),
                  ('+ fused Adam', dict(adam='fused')),
                  ('+ compiled Unet', dict(compile=True)),
                  ('+ library full attention', dict(fast_full_attention=False)))
assert VARIANTS['+ library full attention'] == DEFAULT_LEVERS, 'the last row must be the Trainer\'s default'
VARIANTS.update({
    'default with bf16 weights': {**DEFAULT_LEVERS, 'precision': 'bf16'},
    'default in fp32': {**DEFAULT_LEVERS, 'precision': 'fp32'},
    'fp32 (baseline, no autocast)': {**BASELINE, 'precision': 'fp32'},
})

LEVERS_HELP = ('comma-separated variants to time (default: all). Each is a training-step setup; see VARIANTS in '
               'this file')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data_folder', default='data/mnist_image_folder',
                   help='PNG folder made by get_mnist_data.py, for the data-pipeline rows (default: %(default)s)')
    p.add_argument('--steps', type=int, default=12, help='timed steps per variant, after warm-up (default: 12)')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps per variant first (default: 3)')
    p.add_argument('--recipes', default='small',
                   help='comma-separated recipes to time: a preset, optionally with model/diffusion/training '
                        'settings changed by +key=value, e.g. shipped+image_size=28+attention=lowest+dim=48 '
                        '(default: %(default)s)')
    p.add_argument('--variants', default=None, help=LEVERS_HELP)
    p.add_argument('--batch_sizes', default='',
                   help='extra batch sizes to time with the default setup, for images/s vs batch (e.g. 32,128,256)')
    p.add_argument('--micro_batches', default='',
                   help='extra micro-batch sizes to time with the default setup (the batch run in pieces with '
                        'gradient accumulation; 0 = whole batch) (e.g. 0,8,32)')
    p.add_argument('--threads', default='',
                   help='extra thread counts to time with the default setup (e.g. 1)')
    p.add_argument('--repeats', type=int, default=1,
                   help='rounds: every row is timed once per round and reports its median (default: 1)')
    p.add_argument('--interleave', action='store_true',
                   help='time all rows in one process, one step of each in turn (rows must agree on keep freed '
                        'memory and threads): decides levers of a few percent that drift between processes hides')
    p.add_argument('--one', default=None, help=argparse.SUPPRESS)  # internal: time one row in this process
    p.add_argument('--out', default=None, help='output stem (default: benchmarks/results/bench_training_<device>)')
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import json
    import platform
    import statistics
    import subprocess

    import torch

    from ddpm_mnist.runtime import machine_name

    if args.one:
        return print(json.dumps(time_rows(json.loads(args.one), steps=args.steps, warmup=args.warmup,
                                          data_folder=args.data_folder)))
    variants = args.variants.split(',') if args.variants else list(VARIANTS)
    if args.repeats < 1:
        sys.exit(f'error: --repeats {args.repeats} is not allowed: use an integer >= 1')
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f'error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}')
    machine = machine_name(torch.device('cpu'))
    jobs = []
    for recipe in filter(None, args.recipes.split(',')):
        jobs += [dict(recipe=recipe, variant=v) for v in variants]
        jobs += [dict(recipe=recipe, variant='default', batch=int(b)) for b in filter(None, args.batch_sizes.split(','))]
        jobs += [dict(recipe=recipe, variant='default', threads=int(t)) for t in filter(None, args.threads.split(','))]
        jobs += [dict(recipe=recipe, variant='default', micro_batch=int(m))
                 for m in filter(None, args.micro_batches.split(','))]
    # Shared machines drift by +-20 % within minutes: every row is timed once per round, rounds run one after
    # another, and each row reports its median round (the peak too), so slow minutes hit all rows alike.
    # --interleave goes further: all rows in one process, one step of each in turn.
    if args.interleave:
        shared = {(VARIANTS.get(j['variant'], DEFAULT_LEVERS)['keep_freed_memory'], j.get('threads'),
                   VARIANTS.get(j['variant'], DEFAULT_LEVERS)['precision'] == 'autocast') for j in jobs}
        if len(shared) > 1:  # accelerate's mixed-precision state is one per process, like the allocator setting
            sys.exit('error: --interleave runs every row in one process, so its rows must agree on the process-wide '
                     'settings (keep freed memory, threads, autocast or not); time the others without --interleave')
    groups = [jobs] if args.interleave else [[job] for job in jobs]
    runs, peaks = [[] for _ in jobs], []
    for round_ in range(args.repeats):
        peaks.append({'fp32': gemm_peak(dtype=torch.float32), 'bf16': gemm_peak(dtype=torch.bfloat16)})
        print(f'round {round_ + 1}/{args.repeats}: {machine}; GEMM peak fp32 {peaks[-1]["fp32"]:.0f} GFLOP/s, '
              f'bf16 {peaks[-1]["bf16"]:.0f} GFLOP/s', flush=True)
        samples = []
        for group in groups:  # each group in a fresh process: allocator settings and compiled code stay there
            cmd = [sys.executable, __file__, '--one', json.dumps(group), '--steps', str(args.steps),
                   '--warmup', str(args.warmup), '--data_folder', args.data_folder]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f'error: rows {group} failed:\n{done.stderr[-2000:]}')
            samples += json.loads(done.stdout.strip().splitlines()[-1])
        for row, row_runs in zip(samples, runs):
            row_runs.append(row)
            print_row(row, peaks[-1])
    peak = {kind: statistics.median(p[kind] for p in peaks) for kind in ('fp32', 'bf16')}
    rows = []
    for row_runs in runs:
        row = dict(sorted(row_runs, key=lambda r: r['images_per_s'])[(len(row_runs) - 1) // 2])
        row['images_per_s_rounds'] = [round(r['images_per_s'], 1) for r in row_runs]
        row['peak_fraction'] = row['gflops'] / peak[row['precision']]
        rows.append(row)
    if args.repeats > 1:
        print(f'medians of {args.repeats} rounds (GEMM peak fp32 {peak["fp32"]:.0f}, bf16 {peak["bf16"]:.0f}):')
        for row in rows:
            print_row(row, peak)

    out = Path(args.out or Path(__file__).parent / 'results' / 'bench_training_cpu')
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(machine=machine, torch=torch.__version__, python=platform.python_version(),
                  gemm_peak_gflops=peak, gemm_peak_rounds=peaks, repeats=args.repeats, interleave=args.interleave,
                  steps=args.steps,
                  warmup=args.warmup, rows=rows,
                  default_levers=DEFAULT_LEVERS,
                  command='python benchmarks/bench_training.py ' + ' '.join(sys.argv[1:]))
    write_json(out.with_suffix('.json'), result)
    out.with_suffix('.md').write_text(markdown(result))
    print(f'wrote {out}.md and .json')


def print_row(row, peak):
    parts = ' '.join(f'{k} {v:.0f}' for k, v in row['ms_per_step'].items())
    fraction = row['gflops'] / peak[row['precision']]
    print(f'{row["recipe"]:8s} {row["variant"]:30s} batch {row["batch"]:4d}/{row["micro_batch"]:<3d} '
          f'thr {row["threads"]}: {row["images_per_s"]:6.1f} img/s, {row["gflops"]:6.1f} GFLOP/s '
          f'({100 * fraction:.0f}% of {row["precision"]} peak) | ms: {parts}', flush=True)


def time_rows(jobs, *, steps, warmup, data_folder):
    """Time rows in this process, one step of each in turn, so that a slow minute slows every row alike. One
    row is the plain case; several share process-wide settings (allocator, threads), so main() lets only rows
    that agree on them share a process."""
    import torch

    built = []
    for job in jobs:
        config, micro_batch = recipe_config(job['recipe']), job.get('micro_batch')
        levers = DEFAULT_LEVERS if job['variant'] == 'default' else VARIANTS[job['variant']]
        batch = job.get('batch') or config['training']['train_batch_size']
        if job.get('threads'):
            torch.set_num_threads(job['threads'])
        step = BenchStep(config, levers, batch_size=batch, data_folder=data_folder, micro_batch=micro_batch or None)
        for _ in range(warmup):
            step.run(StepTimer())
        variant = job['variant'] if micro_batch is None else f'default, micro-batch {micro_batch or "-"}'
        built.append((step, StepTimer(), dict(recipe=job['recipe'], variant=variant, batch=batch,
                                              micro_batch=micro_batch or batch, levers=levers)))
    for _ in range(steps):
        for step, timer, _ in built:
            step.run(timer)
    rows = []
    for step, timer, row in built:
        per_step, flops = timer.per_step(), step.flops_per_image()
        images_per_s = row['batch'] / per_step['total']
        levers = row.pop('levers')
        rows.append(dict(row, threads=torch.get_num_threads(),
                         precision='fp32' if levers['precision'] == 'fp32' else 'bf16', images_per_s=images_per_s,
                         flops_per_image=flops, gflops=flops * images_per_s / 1e9,
                         ms_per_step={k: 1e3 * v for k, v in per_step.items()}, loss=step.last_loss))
    return rows


def recipe_config(recipe):
    """'shipped+image_size=28+attention=lowest' -> the shipped preset's config with those settings changed."""
    import copy
    import json

    from ddpm_mnist.settings import PRESETS
    name, *changes = recipe.split('+')
    if name not in PRESETS:
        sys.exit(f'error: unknown preset {name!r} in recipe {recipe!r}; choose from {sorted(PRESETS)}')
    config = copy.deepcopy(PRESETS[name])
    for change in changes:
        key, _, value = change.partition('=')
        section = next((s for s in ('model', 'diffusion', 'training') if key in config[s]),
                       'model' if key == 'attention' else None)
        if section is None or not value:
            sys.exit(f'error: {change!r} in recipe {recipe!r} is not key=value with a model, diffusion or training key')
        try:
            config[section][key] = json.loads(value)
        except json.JSONDecodeError:
            config[section][key] = value
    return config


class BenchStep:
    """The training step the Trainer runs (ddpm_mnist.training.step.training_step: forward under the precision's
    autocast, backward, clip_grad_norm_ 1.0, Adam at the schedule's rate, zero_grad, EMA update), built with one row's
    levers and timed phase by phase through its marks."""

    def __init__(self, recipe, levers, *, batch_size, data_folder, micro_batch=None):
        import torch
        from accelerate import Accelerator
        from denoising_diffusion_pytorch.denoising_diffusion_pytorch import Dataset, cycle
        from ema_pytorch import EMA
        from torch.utils.data import DataLoader

        from ddpm_mnist.runtime import keep_freed_memory
        from ddpm_mnist.training.step import CachedImages, StepParts, apply_levers, decode_all, make_adam
        from ddpm_mnist.model.network import build_diffusion

        torch.manual_seed(0)
        if levers['keep_freed_memory']:
            keep_freed_memory()
        self.diffusion = apply_levers(build_diffusion(recipe), levers)
        t = recipe['training']
        micro = micro_batch or batch_size  # gradient accumulation, as the Trainer's: batch / micro pieces
        if batch_size % micro:
            sys.exit(f'error: micro-batch {micro} does not divide batch {batch_size}')
        accelerator = Accelerator(cpu=True, mixed_precision='bf16' if levers['precision'] == 'autocast' else 'no')
        optimiser = make_adam(self.diffusion.parameters(), levers['adam'], lr=t['train_lr'], betas=(0.9, 0.99))
        ema = EMA(self.diffusion, beta=t['ema_decay'], update_every=t['ema_update_every'],
                  use_foreach=levers['ema_foreach'])
        self.parts = StepParts(model=self.diffusion, optimiser=optimiser, accelerator=accelerator,
                               learning_rate=lambda step: t['train_lr'], emas=(ema,),
                               gradient_accumulate_every=batch_size // micro)
        dataset = Dataset(data_folder, recipe['diffusion']['image_size'], augment_horizontal_flip=False,
                          convert_image_to='L')
        memory_format = torch.channels_last if levers['channels_last'] else None
        if levers['data'] == 'cached':
            self.data = CachedImages(decode_all(dataset), micro, memory_format=memory_format)
        else:
            self.data = cycle(DataLoader(dataset, batch_size=micro, shuffle=True, num_workers=2,
                                         persistent_workers=True))
        self.autocast = levers['precision'] == 'autocast'
        self.steps, self.last_loss, self.torch = 0, None, torch

    def run(self, timer):
        from ddpm_mnist.training.step import training_step
        timer.start()
        self.last_loss = training_step(self.parts, self.data, self.steps, mark=timer.mark)
        self.steps += 1
        timer.steps += 1

    def flops_per_image(self):
        torch = self.torch
        from torch.utils.flop_counter import FlopCounterMode
        data = next(self.data)
        with FlopCounterMode(display=False) as counter, \
                torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.autocast):
            self.diffusion(data).backward()
        self.parts.optimiser.zero_grad()
        return counter.get_total_flops() / len(data)


def markdown(result):
    peak = result['gemm_peak_gflops']
    lines = [f'Machine: {result["machine"]} (torch {result["torch"]}). GEMM peak measured in the same run: '
             f'fp32 {peak["fp32"]:.0f} GFLOP/s, bf16 {peak["bf16"]:.0f} GFLOP/s. Command: `{result["command"]}`.',
             '', 'A step is forward + backward + gradient clipping + Adam + EMA update, as the Trainer runs it; '
             'FLOPs counted by FlopCounterMode over forward + backward. Each row is the median of '
             f'{result.get("repeats", 1)} round(s), all rows timed once per round (img/s of every round in the last '
             'column); the peak is the median of the rounds too. '
             + ('Rows interleaved: all in one process, one step of each in turn.' if result.get('interleave')
                else 'Each row in a fresh process.'), '',
             '| recipe | variant | batch | micro-batch | threads | img/s | GFLOP per image | GFLOP/s | % of peak | data ms '
             '| forward ms | backward ms | optimiser ms | EMA ms | img/s per round |', '|' + '---|' * 15]
    for r in result['rows']:
        ms = r['ms_per_step']
        lines.append(f'| {r["recipe"]} | {r["variant"]} | {r["batch"]} | {r["micro_batch"]} | {r["threads"]} '
                     f'| {r["images_per_s"]:.1f} | {r["flops_per_image"] / 1e9:.2f} '
                     f'| {r["gflops"]:.0f} | {100 * r["peak_fraction"]:.0f}% ({r["precision"]}) | {ms["data"]:.0f} '
                     f'| {ms["forward"]:.0f} | {ms["backward"]:.0f} | {ms["optimiser"]:.0f} | {ms["ema"]:.0f} '
                     f'| {", ".join(map(str, r.get("images_per_s_rounds", [])))} |')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
