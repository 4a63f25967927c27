"""Sampling speed benchmark (not a test): how close one Unet forward gets to the machine's GEMM peak.

For the small and the original-size Unet, per precision and batch size: seconds per NFE (one sampler
step), images per second for DDPM-1000 and DDIM S in {10, 50, 200}, achieved GFLOP/s (FLOPs counted with
torch.utils.flop_counter.FlopCounterMode) and that as a fraction of a GEMM peak measured in the same run.
End-to-end runs check that the sampler's own overhead is negligible (DDIM-50 vs DDPM-1000, and every sampler
of the registry at S steps against S x one Unet forward).

    python3 benchmarks/bench_sampling.py                 # CPU default, about 5 minutes on 2 cores
    python3 benchmarks/bench_sampling.py --device cuda   # GPU table (adds fp16)
    python3 benchmarks/bench_sampling.py --overhead_only # only the per-sampler overhead table (about a minute)
    python3 benchmarks/bench_sampling.py --student runs/distill   # a student at 1, 2, 4 steps vs its teacher's
                                                                  # DDIM-50 and DDPM-1000, seconds per image
Writes benchmarks/results/bench_<device>.json and .md (sampler_overhead_<device>.* with --overhead_only,
students[_conditional]_<device>.* with --student).
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


from bench_common import gemm_peak
from ddpm_mnist.runtime import keep_freed_memory, machine_name, synchronize
from ddpm_mnist.model.network import build_diffusion
from ddpm_mnist.sampling.registry import SAMPLERS, SamplerSettings
from ddpm_mnist.sampling.samplers import ddim_times
from ddpm_mnist.sampling.loop import default_precision, denoise, initial_noise, prepare_for_inference, sample
from ddpm_mnist.cli.arguments import ArgumentParser
from ddpm_mnist.settings import PRESETS
from ddpm_mnist.utils import shown_path, write_json

# 'lean': the small Unet at MNIST's native 28 px with attention only at the lowest level (docs/training.md)
LEAN = {**PRESETS['small'], 'model': {**PRESETS['small']['model'], 'attention': 'lowest'},
        'diffusion': {**PRESETS['small']['diffusion'], 'image_size': 28}}
ARCHS = {'small': PRESETS['small'], 'lean': LEAN, 'original': PRESETS['seed']}
STEPS = {'DDPM-1000': ('ddpm', 1000), 'DDIM-10': ('ddim', 10), 'DDIM-50': ('ddim', 50), 'DDIM-200': ('ddim', 200)}


def forward_flops(diffusion, batch):
    x = torch.zeros(batch, 1, *diffusion.image_size, device=diffusion.device)  # the library keeps (height, width)
    t = torch.zeros(batch, dtype=torch.long, device=diffusion.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        diffusion.model(x, t)
    return counter.get_total_flops()


def seconds_per_nfe(diffusion, batch, repeats):
    """Median time of one DDIM step (Unet forward + update) at this batch, after warm-up."""
    x = torch.randn(batch, 1, *diffusion.image_size, device=diffusion.device)
    t = torch.full((batch,), 500, dtype=torch.long, device=diffusion.device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            synchronize(diffusion.device)
            start = time.perf_counter()
            diffusion.model_predictions(x, t, clip_x_start=True, rederive_pred_noise=True)
            synchronize(diffusion.device)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(device, arch, batch, precision, repeats, peaks, compiled=False):
    """One table row: seconds per NFE, GFLOP/s and the fraction of the GEMM peak of one Unet setting."""
    flops = forward_flops(prepare_for_inference(build_diffusion(ARCHS[arch]).to(device).eval()), batch)
    diffusion = prepare_for_inference(build_diffusion(ARCHS[arch]).to(device).eval(), precision, compile=compiled)
    first = None
    if compiled:  # the compile happens in the first calls; time them separately
        start = time.perf_counter()
        seconds_per_nfe(diffusion, batch, repeats=1)
        first = time.perf_counter() - start
    spn = seconds_per_nfe(diffusion, batch, repeats)
    gflops = flops / spn / 1e9
    row = dict(arch=arch, batch=batch, precision=precision, compiled=compiled, first_call_seconds=first,
               seconds_per_nfe=spn, gflop_per_nfe=flops / 1e9, gflops=gflops, peak_fraction=gflops / peaks[precision],
               **{f'img_per_s_{name}': batch / (spn * steps) for name, (_, steps) in STEPS.items()})
    print(f'{arch:8s} batch {batch:5d} {precision}{" compiled" if compiled else ""}: {spn * 1e3:8.1f} ms/NFE, '
          f'{gflops:7.1f} GFLOP/s ({100 * row["peak_fraction"]:.0f}% of {precision} GEMM peak), DDIM-50 '
          f'{row["img_per_s_DDIM-50"]:.2f} img/s' + (f', first calls {first:.0f} s' if compiled else ''), flush=True)
    return row


def end_to_end(diffusion, strategy, steps, num_images, batch=None):
    batch = batch or num_images
    total = diffusion.num_timesteps
    sample(diffusion, SamplerSettings.resolve('ddim', 2, total_timesteps=total), num_samples=batch, batch_size=batch)
    synchronize(diffusion.device)
    start = time.perf_counter()
    sample(diffusion, SamplerSettings.resolve(strategy, steps, total_timesteps=total), num_samples=num_images,
           batch_size=batch)
    synchronize(diffusion.device)
    return time.perf_counter() - start


class ForwardsOnly:
    """A 'sampler' that only calls the Unet at DDIM's timesteps and leaves x as it is: S forwards through the
    same loop, without any sampler arithmetic (what "S x one Unet forward" costs end to end)."""
    init_noise_sigma = 1.0

    def __init__(self, diffusion, steps):
        self.timesteps = [t for t, _ in ddim_times(diffusion.num_timesteps, steps)]

    def scale_model_input(self, x, t):
        return x

    def step(self, prediction, t, x, generator):
        return x


def forwards_only(diffusion, steps, batch):
    x_T = initial_noise(batch, 1, diffusion.image_size[0], seed=0)
    denoise(diffusion, ForwardsOnly(diffusion, 2), x_T, None)
    synchronize(diffusion.device)
    start = time.perf_counter()
    denoise(diffusion, ForwardsOnly(diffusion, steps), x_T, None)
    synchronize(diffusion.device)
    return time.perf_counter() - start


def sampler_overhead(device, precision, batch, steps, repeats):
    """Each sampler of the registry at S steps, end to end, against the same loop making the same S Unet calls
    and nothing else (ForwardsOnly), and against S x the median time of one forward: the difference is the
    sampler's own cost."""
    diffusion = prepare_for_inference(build_diffusion(ARCHS['small']).to(device).eval(), precision)
    forward = seconds_per_nfe(diffusion, batch, repeats)
    bare = statistics.median(forwards_only(diffusion, steps, batch) for _ in range(3))
    print(f'{steps} forwards in the sampling loop, no sampler: {bare:.3f} s; {steps} x median forward '
          f'{steps * forward:.3f} s', flush=True)
    rows = []
    for name, spec in SAMPLERS.items():
        if spec.all_steps or spec.student:
            continue  # DDPM's step is DDIM's with eta = 1; its T = 1000 steps would take minutes here
        seconds = statistics.median(end_to_end(diffusion, name, steps, batch) for _ in range(3))
        rows.append(dict(sampler=name, label=spec.label, steps=steps, batch=batch, seconds=seconds,
                         forward_seconds=forward, forwards_only_seconds=bare, overhead=seconds / bare - 1,
                         over_median_forward=seconds / (steps * forward) - 1))
        print(f'{spec.label:22s} {steps} steps, batch {batch}: {seconds:.3f} s vs {bare:.3f} s of bare forwards '
              f'({100 * rows[-1]["overhead"]:+.1f}%; {100 * rows[-1]["over_median_forward"]:+.1f}% over '
              f'{steps} x the median forward)', flush=True)
    return rows


def overhead_markdown(machine, precision, rows):
    lines = [f'Sampler overhead on {machine}, small Unet, {precision}: seconds for one batch at S steps (median of 3 '
             'runs) against the same loop making the same S Unet calls and nothing else ("bare forwards"), and '
             'against S x the median of single timed forwards.', '',
             '| sampler | S | batch | seconds | bare forwards | overhead | S x median forward | over it |',
             '|---|---|---|---|---|---|---|---|']
    lines += [f'| {r["label"]} | {r["steps"]} | {r["batch"]} | {r["seconds"]:.3f} | {r["forwards_only_seconds"]:.3f} | '
              f'{100 * r["overhead"]:+.1f}% | {r["steps"] * r["forward_seconds"]:.3f} | '
              f'{100 * r["over_median_forward"]:+.1f}% |' for r in rows]
    return '\n'.join(lines) + '\n'


def main() -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help='cpu or cuda (default: %(default)s)')
    p.add_argument('--batches', type=lambda s: [int(x) for x in s.split(',')], default=None,
                   help='batch sizes (default: 25,100 on CPU; 100,1000 on CUDA)')
    p.add_argument('--repeats', type=int, default=None, help='timed forwards per cell (default: 3 CPU, 20 CUDA)')
    p.add_argument('--end_to_end_batch', type=int, default=None,
                   help='batch of the end-to-end runs (default: 25 on CPU, 1000 on CUDA)')
    p.add_argument('--compile', action='store_true',
                   help='also time torch.compile of the small Unet (adds its start-up time; off by default)')
    p.add_argument('--overhead_only', action='store_true',
                   help='only time every sampler at --overhead_steps against S x one Unet forward')
    p.add_argument('--overhead_steps', type=int, default=20, help='steps S of the overhead runs (default: %(default)s)')
    p.add_argument('--layout', action='store_true',
                   help='only DDPM-1000 and DDIM-50 end to end, seconds per image, for the small Unet before and '
                        'after the lean layout (28 px, attention at the lowest level only)')
    p.add_argument('--student', nargs='?', const='SHIPPED', default=None,
                   help='only a distilled student (a checkpoint, export or run folder; alone: the shipped student) '
                        'with the consistency sampler at 1, 2 and 4 steps against its teacher (the file it was '
                        'distilled from) with DDIM-50 and DDPM-1000, end to end, seconds per image, one run')
    p.add_argument('--out', default=str(Path(__file__).parent / 'results'), help='output folder')
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    if not cuda:
        keep_freed_memory()  # as inference_comparison.py does
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.overhead_only:
        precision = default_precision(device)
        rows = sampler_overhead(device, precision, args.end_to_end_batch or (1000 if cuda else 100),
                                args.overhead_steps, args.repeats or (20 if cuda else 5))
        stem = out / f'sampler_overhead_{device.type}'
        write_json(stem.with_suffix('.json'), dict(machine=machine_name(device), precision=precision,
                                                   torch=str(torch.__version__), rows=rows))
        stem.with_suffix('.md').write_text(overhead_markdown(machine_name(device), precision, rows))
        print(overhead_markdown(machine_name(device), precision, rows))
        return
    if args.layout:
        return layout_comparison(device, out, args.end_to_end_batch or (1000 if cuda else 100))
    if args.student:
        return student_timings(device, out, args.student, args.end_to_end_batch or (1000 if cuda else 100))
    batches = args.batches or ([100, 1000] if cuda else [25, 100])
    repeats = args.repeats or (20 if cuda else 3)
    precisions = ['fp32', 'bf16', 'fp16'] if cuda else ['fp32', 'bf16']
    peaks = {'fp32': gemm_peak(device, torch.float32), 'bf16': gemm_peak(device, torch.bfloat16)}
    if cuda:
        peaks['fp16'] = gemm_peak(device, torch.float16)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    print(f'{machine_name(device)}: GEMM peak ' + ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peaks.items()))

    rows = [measure(device, arch, batch, precision, repeats, peaks)
            for arch in ARCHS for batch in batches for precision in precisions]

    e2e_batch = args.end_to_end_batch or (1000 if cuda else 25)
    def small(precision):
        return prepare_for_inference(build_diffusion(ARCHS['small']).to(device).eval(), precision)

    e2e = {}
    best = default_precision(device)
    diffusion = small(best)
    for name, (strategy, steps) in STEPS.items():
        runs = 1 if strategy == 'ddpm' else 3  # median of 3 for the short runs, which are noisier
        e2e[name] = statistics.median(end_to_end(diffusion, strategy, steps, e2e_batch) for _ in range(runs))
        print(f'end-to-end small {best} batch {e2e_batch} {name}: {e2e[name]:.2f} s', flush=True)
    hundred = {}  # 100 images of DDIM-50 per batch size and precision
    for batch in (100,) if cuda else (25, 100):
        hundred[batch] = {prec: end_to_end(small(prec), 'ddim', 50, 100, batch) for prec in ('fp32', 'bf16')}
        print(f'end-to-end small DDIM-50, 100 images in batches of {batch}: fp32 {hundred[batch]["fp32"]:.2f} s, '
              f'bf16 {hundred[batch]["bf16"]:.2f} s ({hundred[batch]["fp32"] / hundred[batch]["bf16"]:.2f}x)',
              flush=True)
    speedup = e2e['DDPM-1000'] / e2e['DDIM-50']
    print(f'DDIM-50 speed-up over DDPM-1000: {speedup:.1f}x (ideal 20x; target >= 18x)')
    if args.compile:  # last: compiling changes later uncompiled timings in the same process
        rows += [measure(device, 'small', batch, precision, repeats, peaks, compiled=True)
                 for batch in batches for precision in precisions]

    result = dict(machine=machine_name(device), device=str(device), torch=str(torch.__version__), peaks=peaks,
                  rows=rows, end_to_end=dict(batch=e2e_batch, precision=best, seconds=e2e,
                                             ddim50_over_ddpm1000=speedup, ddim50_100_images=hundred))
    stem = out / f'bench_{device.type}'
    write_json(stem.with_suffix('.json'), result)
    stem.with_suffix('.md').write_text(markdown(result))
    print(markdown(result))


STUDENT_ROWS = (('teacher', 'ddpm', 1000), ('teacher', 'ddim', 50), ('student', 'consistency', 4),
                ('student', 'consistency', 2), ('student', 'consistency', 1))


def student_timings(device, out, student_path, batch):
    """Seconds per image, one batch end to end (after a warm-up batch), of a student at 1, 2 and 4 steps and its
    teacher with DDIM-50 and DDPM-1000, in the default precision, same batch, one process."""
    from ddpm_mnist.api import load_model, teacher_path
    from ddpm_mnist.model.conditional import is_conditional
    from ddpm_mnist.utils import UserError
    precision = default_precision(device)
    student = load_model(None if student_path == 'SHIPPED' else student_path, student=student_path == 'SHIPPED',
                         device=device.type, precision=precision)
    if not student.diffusion.student:
        raise UserError(f'{student.path} is not a distilled student (distill_ddpm_mnist.py makes one)')
    teacher = load_model(teacher_path(student), device=device.type, precision=precision)
    models = dict(teacher=teacher.diffusion, student=student.diffusion)
    rows = []
    for role, strategy, steps in STUDENT_ROWS:
        seconds = end_to_end(models[role], strategy, steps, batch)
        label = SamplerSettings.resolve(strategy, steps, total_timesteps=models[role].num_timesteps).label
        rows.append(dict(model=role, sampler=label, nfe=steps, seconds_per_image=seconds / batch))
        print(f'{role} {label}: {seconds / batch:.4f} s per image', flush=True)
    base = {row['sampler']: row['seconds_per_image'] for row in rows}
    lines = [f'{machine_name(device)}, {precision}, batch {batch}, one batch end to end after a warm-up; student '
             f'{shown_path(student.path)}, teacher {shown_path(teacher.path)}.', '',
             '| model | sampler | NFE | s/image | faster than DDIM-50 | faster than DDPM-1000 |',
             '|---|---|---|---|---|---|']
    lines += [f'| {r["model"]} | {r["sampler"]} | {r["nfe"]} | {r["seconds_per_image"]:.4f} | '
              f'{speed_up(base["DDIM 50, eta 0.0"], r["seconds_per_image"])} | '
              f'{speed_up(base["DDPM 1000"], r["seconds_per_image"])} |' for r in rows]
    kind = '_conditional' if is_conditional(student.config['model']) else ''  # one file per shipped student
    stem = out / f'students{kind}_{device.type}'
    write_json(stem.with_suffix('.json'), dict(machine=machine_name(device), precision=precision, batch=batch,
                                               student=shown_path(student.path), teacher=shown_path(teacher.path),
                                               rows=rows))
    stem.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


def speed_up(baseline: float, seconds: float) -> str:
    """How many times faster than the baseline, to 2 significant digits at least (DDPM-1000 against DDIM-50 is
    0.046x, not 0.0x)."""
    ratio = baseline / seconds
    return f'{ratio:.0f}x' if ratio >= 100 else f'{ratio:.1f}x' if ratio >= 1 else f'{ratio:.2g}x'


def layout_comparison(device, out, batch):
    """Seconds per image of DDPM-1000 and DDIM-50, one batch end to end, for the small Unet (32 px, the library's
    attention) and the lean layout, in the default precision, with the GEMM peak measured in the same run."""
    precision = default_precision(device)
    peak = gemm_peak(device, torch.bfloat16 if precision == 'bf16' else torch.float32)
    rows = []
    for arch in ('small', 'lean'):
        diffusion = prepare_for_inference(build_diffusion(ARCHS[arch]).to(device).eval(), precision)
        for name in ('DDIM-50', 'DDPM-1000'):
            strategy, steps = STEPS[name]
            seconds = end_to_end(diffusion, strategy, steps, batch)
            rows.append(dict(arch=arch, sampler=name, batch=batch, seconds=seconds, seconds_per_image=seconds / batch,
                             gflop_per_nfe_image=forward_flops(diffusion, 1) / 1e9))
            print(f'{arch:6s} {name:10s} batch {batch}: {seconds:.2f} s, {seconds / batch:.4f} s/image', flush=True)
    machine = machine_name(device)
    lines = [f'Sampling, small Unet before (32 px, library attention) and after (lean: 28 px, attention at the lowest '
             f'level only), {precision}, one batch of {batch} end to end; {machine}, GEMM peak {precision} '
             f'{peak:.0f} GFLOP/s in the same run.', '',
             '| Unet | sampler | s/image | GFLOP per image per NFE |', '|---|---|---|---|']
    lines += [f'| {r["arch"]} | {r["sampler"]} | {r["seconds_per_image"]:.4f} | {r["gflop_per_nfe_image"]:.3f} |'
              for r in rows]
    for name in ('DDIM-50', 'DDPM-1000'):
        before, after = (next(r for r in rows if r['arch'] == a and r['sampler'] == name) for a in ('small', 'lean'))
        lines.append(f'\n{name}: {before["seconds"] / after["seconds"]:.2f}x faster with the lean layout.')
    stem = out / f'bench_layout_{device.type}'
    write_json(stem.with_suffix('.json'), dict(machine=machine, precision=precision, peak=peak, rows=rows,
                                               torch=str(torch.__version__)))
    stem.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


def markdown(r):
    lines = [f'Machine: {r["machine"]} (torch {r["torch"]}). GEMM peak measured in the same run: '
             + ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in r['peaks'].items()) + '.', '',
             '| Unet | batch | precision | ms per NFE | GFLOP/s | % of GEMM peak | img/s DDPM-1000 | img/s DDIM-10 '
             '| img/s DDIM-50 | img/s DDIM-200 |', '|---|---|---|---|---|---|---|---|---|---|']
    for row in r['rows']:
        precision = row['precision'] + (f' + compile (first calls {row["first_call_seconds"]:.0f} s)'
                                         if row.get('compiled') else '')
        lines.append(f'| {row["arch"]} | {row["batch"]} | {precision} | {row["seconds_per_nfe"] * 1e3:.1f} | '
                     f'{row["gflops"]:.0f} | {100 * row["peak_fraction"]:.0f}% | {row["img_per_s_DDPM-1000"]:.3f} | '
                     f'{row["img_per_s_DDIM-10"]:.1f} | {row["img_per_s_DDIM-50"]:.2f} | '
                     f'{row["img_per_s_DDIM-200"]:.2f} |')
    e = r['end_to_end']
    lines += ['', f'End to end, small Unet, {e["precision"]}, {e["batch"]} images: '
              + ', '.join(f'{k} {v:.2f} s' for k, v in e['seconds'].items())
              + f'; DDIM-50 is {e["ddim50_over_ddpm1000"]:.1f}x faster than DDPM-1000 (ideal 20x). '
              'DDIM-50 for 100 images, ' + '; '.join(
                  f'in batches of {batch}: fp32 {t["fp32"]:.2f} s, bf16 {t["bf16"]:.2f} s '
                  f'({t["fp32"] / t["bf16"]:.2f}x)' for batch, t in e['ddim50_100_images'].items()) + '.']
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
