"""Classifier-free guidance, measured: for each guidance scale W, N digits with balanced labels from the same x_T,
scored by conditional accuracy (the project classifier agrees with the requested digit), FID and IS, and the
FID-against-guidance trade-off plot (the standard figure for guidance), with the real-data floor drawn.

  python3 scripts/guidance_sweep.py --raw_dir ../shared/data/mnist-full                       # shipped model
  python3 scripts/guidance_sweep.py --checkpoint runs/conditional/model-10.pt --scales 1,2,3 --num_samples 500
Writes assets/guidance.{json,md,png}. Each scale is saved as it is measured; the same command resumes.
"""
import argparse
import sys
from pathlib import Path
from typing import Any, Sequence


from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args
from ddpm_mnist.runtime import SavedMeasurements
from ddpm_mnist.utils import atomic_path, file_digest, shown_path, write_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', default=None,
                   help='conditional model (default: ddpm_mnist/pretrained/ddpm_mnist_conditional.safetensors)')
    add_mnist_args(p)
    p.add_argument('--scales', default='0,1,1.25,1.5,2,3,4', help='guidance scales W (default: %(default)s)')
    add_setting(p, 'strategy', default='ddim', help='sampler (default: %(default)s)')
    add_setting(p, 'steps', rule=at_least(1), type=int, default=50, help='sampler steps (default: %(default)s)')
    add_setting(p, 'ddim_eta', default=0.0,
                help='DDIM eta in [0, 1], for --strategy ddim (default: %(default)s)')
    add_setting(p, 'num_samples', rule=at_least(10), default=1000, help='images per scale (default: %(default)s)')
    add_setting(p, 'seed', default=0, help='seed of x_T, the same for every scale (default: 0)')
    p.add_argument('--output', default='assets/guidance', help='output stem (default: %(default)s)')
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    import ddpm_mnist
    from ddpm_mnist.evaluation.classifier import classify
    from ddpm_mnist.model.conditional import NUM_DIGITS, balanced_labels
    from ddpm_mnist.evaluation.reference import reference_evaluator
    from ddpm_mnist.settings import SHIPPED_CONDITIONAL

    model = ddpm_mnist.load_model(args.checkpoint or SHIPPED_CONDITIONAL)
    evaluator = reference_evaluator(image_size=model.image_size, raw_dir=args.raw_dir, data_root=args.data_root,
                                    seed=args.seed).evaluator
    labels = balanced_labels(args.num_samples)
    out = Path(args.output)
    setup = dict(checkpoint=shown_path(model.path), checkpoint_sha256_16=file_digest(model.path),
                 strategy=args.strategy, steps=args.steps, eta=args.ddim_eta, num_samples=args.num_samples,
                 seed=args.seed, image_size=model.image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = SavedMeasurements(out.with_suffix('.json'), setup, log=lambda line: print(line, flush=True))

    def scale_row(scale: float) -> dict[str, Any]:
        images = ddpm_mnist.sample(model, strategy=args.strategy, steps=args.steps, n=args.num_samples,
                                   eta=args.ddim_eta, seed=args.seed, guidance_scale=scale)
        _, probs = classify(evaluator.classifier, images)
        scores = evaluator.score(images)
        accuracy = float((torch.from_numpy(probs).argmax(1) == labels).float().mean())
        per_digit = [float((torch.from_numpy(probs[labels == d]).argmax(1) == d).float().mean())
                     for d in range(NUM_DIGITS)]
        return dict(scale=scale, accuracy=accuracy, worst_digit_accuracy=min(per_digit), **{
            k: scores[k] for k in ('fid', 'fid_low', 'fid_high', 'inception_score', 'inception_score_low',
                                   'inception_score_high', 'confidence')})

    rows = [saved.get(f'W={scale:g}', lambda scale=scale: scale_row(scale))
            for scale in map(float, args.scales.split(','))]
    floor = (evaluator.calibration(args.num_samples)['real training digits (floor)']['fid']
             if evaluator.train is not None else
             evaluator.stats.floors.get(str(args.num_samples)) if evaluator.stats is not None else None)
    result = saved.record(floor_fid=floor, rows=rows,
                          command='python3 scripts/guidance_sweep.py ' + ' '.join(argv or sys.argv[1:]))
    write_json(out.with_suffix('.json'), result)
    with atomic_path(out.with_suffix('.md')) as tmp:
        tmp.write_text(markdown(result))
    with atomic_path(out.with_suffix('.png')) as tmp:
        plot(result, tmp)
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    from ddpm_mnist.evaluation.intervals import interval_cell
    floor = result['floor_fid']
    floor_text = f'; real-data floor FID {floor:.2f}' if floor is not None else ''
    eta = f', eta {result["eta"]:g}' if result['strategy'] == 'ddim' else ''
    lines = [f'{result["strategy"]} {result["steps"]} steps{eta}, N = {result["num_samples"]} balanced digits per '
             f'scale, the same x_T (seed {result["seed"]}){floor_text}. Command: `{result["command"]}`.', '',
             '| W | conditional accuracy | worst digit | FID [95 %] | FID / floor | IS [95 %] | confidence |',
             '|---|---|---|---|---|---|---|']
    for r in result['rows']:
        ratio = f'{r["fid"] / floor:.2f}x' if floor else '–'
        lines.append(f'| {r["scale"]:g} | {100 * r["accuracy"]:.1f} % | {100 * r["worst_digit_accuracy"]:.1f} % | '
                     f'{interval_cell(r, "fid")} | {ratio} | {interval_cell(r, "inception_score")} | '
                     f'{r["confidence"]:.3f} |')
    return '\n'.join(lines) + '\n'


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from ddpm_mnist.evaluation.intervals import error_bars
    rows = result['rows']
    fig, ax = plt.subplots(figsize=(6, 4))
    scales = [r['scale'] for r in rows]
    ax.errorbar(scales, [r['fid'] for r in rows], yerr=error_bars(rows),
                marker='o', capsize=3, label='FID (95 % interval)')
    if result['floor_fid'] is not None:
        ax.axhline(result['floor_fid'], ls='--', color='grey', label='real digits (floor)')
    ax.set_xlabel('guidance scale W')
    ax.set_ylabel('FID (project classifier features)')
    right = ax.twinx()
    right.plot(scales, [100 * r['accuracy'] for r in rows], 's:', color='tab:green', label='conditional accuracy')
    right.set_ylabel('conditional accuracy (%)', color='tab:green')
    ax.legend(loc='upper center', fontsize=8)
    ax.set_title(f'Guidance trade-off: {result["strategy"]}-{result["steps"]}, N = {result["num_samples"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format='png')  # path may be a temporary name without .png
    plt.close(fig)


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
