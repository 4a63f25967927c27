"""The editing measurements of docs/editing.md, on real MNIST test digits:

- bottom-half inpainting: the project classifier's agreement with the true label, and FID of the completed digits,
  for RePaint (DDPM chain), plain replacement (RePaint's baseline, no resampling), the library's repaint.py loop on
  the same weights, and RePaint on DDIM steps;
- DDIM inversion: round-trip PSNR for K = 10, 20, 50, 100, 200;
- SDEdit: how often the digit's label survives, against strength.

  python3 scripts/edit_benchmark.py --raw_dir ../shared/data/mnist-full --num_digits 1000
Writes assets/editing.{json,md}. Long on a CPU: RePaint makes about resamples x T Unet calls per digit. Each
measurement is saved as soon as it is made, and each finished batch of an inpainting method in --cache_dir; rerun
the same command and it resumes, reusing what the same model, digits and seed already gave.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence


from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args
from ddpm_mnist.runtime import BatchCache, SavedMeasurements
from ddpm_mnist.utils import atomic_path, file_digest, shown_path, write_json

METHODS = ('repaint', 'replacement', 'library_repaint', 'repaint_ddim')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', default=None, help='model to edit with (default: the shipped model)')
    add_mnist_args(p)
    add_setting(p, 'num_digits', rule=at_least(10), type=int, default=1000, help='test digits per measurement')
    p.add_argument('--methods', default=','.join(METHODS),
                   help=f'inpainting methods, from {",".join(METHODS)} (default: all)')
    add_setting(p, 'ddim_steps', rule=at_least(1), type=int, default=100,
                help='DDIM steps of the fast RePaint variant (default: %(default)s)')
    p.add_argument('--inversion_steps', default='10,20,50,100,200', help='K of the inversion round trips')
    p.add_argument('--strengths', default='0.2,0.4,0.6,0.8,1.0', help='SDEdit strengths')
    p.add_argument('--skip', default='', help='comma-separated parts to skip: inpaint, invert, sdedit')
    add_setting(p, 'batch_size', default=100, help='images per forward pass (default: %(default)s)')
    add_setting(p, 'seed', default=0, help='seed of every noise draw (default: %(default)s)')
    p.add_argument('--output', default='assets/editing', help='output stem (default: %(default)s)')
    p.add_argument('--cache_dir', default='runs/edit_benchmark_cache',
                   help='where finished batches of the inpainting methods are kept, so a killed run resumes batch by '
                        'batch (default: %(default)s; safe to delete)')
    args = p.parse_args(argv)
    unknown = set(args.methods.split(',')) - set(METHODS)
    if unknown:
        p.error(f'unknown --methods {sorted(unknown)}; choose from {",".join(METHODS)}')
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import numpy as np
    import torch

    from ddpm_mnist.sampling import editing

    from ddpm_mnist.sampling.images import named_mask
    from ddpm_mnist.api import load_model
    from ddpm_mnist.evaluation.classifier import as_training_resolution
    from ddpm_mnist.datasets import load_split
    from ddpm_mnist.runtime import keep_freed_memory
    from ddpm_mnist.evaluation.metrics import Evaluator
    from ddpm_mnist.sampling.registry import SamplerSettings
    from ddpm_mnist.evaluation.sweep import cache_key

    keep_freed_memory()
    model = load_model(args.checkpoint)
    diffusion, size = model.diffusion, model.image_size
    test, labels = load_split('test', args.raw_dir, args.data_root)
    train, _ = load_split('train', args.raw_dir, args.data_root)
    evaluator = Evaluator(test, train, image_size=size, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    chosen = rng.permutation(len(test))[:args.num_digits]
    digits = as_training_resolution(test[chosen], size)
    truth = torch.from_numpy(labels[chosen].astype(np.int64))
    out = Path(args.output)
    setup = dict(checkpoint=shown_path(model.path), checkpoint_sha256_16=file_digest(model.path),
                 num_digits=args.num_digits, seed=args.seed, image_size=size, batch_size=args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = SavedMeasurements(out.with_suffix('.json'), setup, log=lambda line: print(line, flush=True))
    measure = saved.get

    def label_agreement(images):
        return float((torch.from_numpy(classify_probs(evaluator, images)).argmax(1) == truth).float().mean())

    def inpainting_row(method: str, mask: torch.Tensor) -> dict[str, Any]:
        steps = args.ddim_steps if method == 'repaint_ddim' else None
        # a batch depends only on (seed, its first digit), not on --num_digits, so a larger run reuses a smaller
        # one's batches (inpaint checks their size: a short last batch is recomputed)
        batch_setup = {k: v for k, v in setup.items() if k != 'num_digits'}
        cache = BatchCache(Path(args.cache_dir) / f'{method}-{cache_key(method=method, steps=steps, **batch_setup)}')
        start = time.perf_counter()
        if method == 'library_repaint':
            images, nfe = editing.library_repaint(diffusion, digits, mask, seed=args.seed,
                                                  batch_size=args.batch_size, cache=cache)
        else:
            resamples = 1 if method == 'replacement' else 10
            images, nfe = editing.inpaint(diffusion, digits, mask, steps=steps, eta=1.0 if steps is None else 0.0,
                                          resamples=resamples, seed=args.seed, batch_size=args.batch_size,
                                          cache=cache)
        seconds = time.perf_counter() - start  # of the batches this run computed (a resumed run reuses the rest)
        scores = evaluator.score(images)
        return dict(method=method, nfe_per_image=nfe,
                    seconds_per_image=seconds / cache.computed if cache.computed else None,
                    label_agreement=label_agreement(images), fid=scores['fid'], fid_low=scores['fid_low'],
                    fid_high=scores['fid_high'])

    def inversion_row(k: int) -> dict[str, Any]:
        inversion = editing.invert(diffusion, digits, steps=k, batch_size=args.batch_size)
        return dict(steps=k, psnr_mean=float(inversion.psnr.mean()), psnr_median=float(inversion.psnr.median()))

    def sdedit_row(strength: float) -> dict[str, Any]:
        ddim = SamplerSettings.resolve('ddim', total_timesteps=diffusion.num_timesteps)  # DDIM-50, or all T if fewer
        images, nfe = editing.sdedit(diffusion, digits, strength=strength, settings=ddim, seed=args.seed,
                                     batch_size=args.batch_size)
        return dict(strength=strength, nfe_per_image=nfe, label_kept=label_agreement(images))

    parts = {}
    if 'inpaint' not in args.skip:
        mask = named_mask('bottom', size)
        rows = [measure(f'inpaint:{method}' + (f':{args.ddim_steps}' if method == 'repaint_ddim' else ''),
                        lambda method=method: inpainting_row(method, mask)) for method in args.methods.split(',')]
        real = measure('inpaint:real_digits', lambda: dict(label_agreement=label_agreement(digits),
                                                           fid=evaluator.score(digits)['fid']))
        parts['inpainting'] = dict(mask='bottom', rows=rows, real_digits=real)
    if 'invert' not in args.skip:
        parts['inversion'] = [measure(f'invert:{k}', lambda k=k: inversion_row(k))
                              for k in map(int, args.inversion_steps.split(','))]
    if 'sdedit' not in args.skip:
        parts['sdedit'] = [measure(f'sdedit:{strength}', lambda strength=strength: sdedit_row(strength))
                           for strength in map(float, args.strengths.split(','))]
    result = saved.record(command='python3 scripts/edit_benchmark.py ' + ' '.join(argv or sys.argv[1:]), **parts)
    write_json(out.with_suffix('.json'), result)
    with atomic_path(out.with_suffix('.md')) as tmp:
        tmp.write_text(markdown(result))
    print(markdown(result))


def classify_probs(evaluator: Any, images: Any) -> Any:
    from ddpm_mnist.evaluation.classifier import classify
    return classify(evaluator.classifier, images)[1]


def cell(value: float | None, spec: str) -> str:
    return '–' if value is None else format(value, spec)


def share_cell(share: float, n: int) -> str:
    """'81.5 % [79.3, 83.8]': a share of n digits with its bootstrap 95 % interval."""
    from ddpm_mnist.evaluation.intervals import proportion_interval
    _, low, high = proportion_interval(share, n)
    return f'{100 * share:.1f} % [{100 * low:.1f}, {100 * high:.1f}]'


def markdown(result: dict[str, Any]) -> str:
    from ddpm_mnist.evaluation.intervals import interval_cell
    n = result['num_digits']
    lines = [f'{n} MNIST test digits, seed {result["seed"]}, model {result["checkpoint"]} '
             f'({result["image_size"]} px); command: `{result["command"]}`.', '']
    if 'inpainting' in result:
        real = result['inpainting']['real_digits']
        lines += ['Bottom-half inpainting (the top half kept):', '',
                  '| method | NFE per digit | s per digit | label agreement [95 %] | FID [95 %] |',
                  '|---|---|---|---|---|']
        lines += [f'| {r["method"]} | {r["nfe_per_image"]} | {cell(r["seconds_per_image"], ".3f")} | '
                  f'{share_cell(r["label_agreement"], n)} | {interval_cell(r, "fid")} |'
                  for r in result['inpainting']['rows']]
        lines += [f'| *the real digits* | – | – | {100 * real["label_agreement"]:.1f} % | {real["fid"]:.2f} |', '']
    if 'inversion' in result:
        lines += ['DDIM inversion round trip (eta 0, K steps each way):', '', '| K | mean PSNR (dB) | median |',
                  '|---|---|---|']
        lines += [f'| {r["steps"]} | {r["psnr_mean"]:.1f} | {r["psnr_median"]:.1f} |' for r in result['inversion']]
        lines.append('')
    if 'sdedit' in result:
        lines += ['SDEdit (DDIM-50 over the chain): share of digits whose label survives:', '',
                  '| strength | NFE | label kept [95 %] |', '|---|---|---|']
        lines += [f'| {r["strength"]} | {r["nfe_per_image"]} | {share_cell(r["label_kept"], n)} |'
                  for r in result['sdedit']]
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
