"""Check the FID and KID intervals (docs/metrics.md): draw fresh sets of N samples of one configuration (other
seeds), give each its bootstrap interval, and count how often an interval covers the value of another fresh draw;
also the spread of the values across seeds beside the intervals.

  python3 scripts/interval_coverage.py --raw_dir ../shared/data/mnist-full                  # real digits, cheap
  python3 scripts/interval_coverage.py --raw_dir ../shared/data/mnist-full --source model --strategy ddim --steps 10
Writes assets/interval_coverage.{json,md}.
"""
import argparse
from typing import Sequence
import sys
from pathlib import Path


from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args
from ddpm_mnist.utils import shown_path, write_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mnist_args(p)
    p.add_argument('--source', choices=['real', 'model'], default='real',
                   help='real: sets of real training digits (no sampling); model: sets sampled from --checkpoint')
    p.add_argument('--checkpoint', default=None, help='model for --source model (default: the shipped model)')
    add_setting(p, 'strategy', default='ddim', help='sampler (default: %(default)s)')
    add_setting(p, 'steps', rule=at_least(1), type=int, default=10, help='sampler steps')
    add_setting(p, 'num_samples', rule=at_least(10), default=500, help='N per set')
    add_setting(p, 'draws', rule=at_least(3), type=int, default=20, help='fresh sets (seeds 0..draws-1)')
    p.add_argument('--output', default='assets/interval_coverage', help='output stem (default: %(default)s)')
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import numpy as np

    import ddpm_mnist
    from ddpm_mnist.evaluation.reference import reference_evaluator

    model = ddpm_mnist.load_model(args.checkpoint) if args.source == 'model' else None
    size = model.image_size if model is not None else 32
    evaluator = reference_evaluator(image_size=size, raw_dir=args.raw_dir, data_root=args.data_root).evaluator
    if args.source == 'real' and evaluator.train is None:
        raise SystemExit('error: --source real needs the MNIST training digits; pass --raw_dir')
    draws = []
    for seed in range(args.draws):
        if model is None:
            rng = np.random.default_rng(1000 + seed)
            images = evaluator.train[rng.permutation(len(evaluator.train))[:args.num_samples]]
        else:
            images = ddpm_mnist.sample(model, strategy=args.strategy, steps=args.steps, n=args.num_samples, seed=seed)
        scores = evaluator.score(images)
        draws.append({k: scores[k] for k in ('fid', 'fid_low', 'fid_high', 'kid', 'kid_low', 'kid_high')})
        print(f'draw {seed}: FID {scores["fid"]:.2f} [{scores["fid_low"]:.2f}, {scores["fid_high"]:.2f}]', flush=True)
    result = dict(source=args.source, checkpoint=shown_path(model.path) if model else None, strategy=args.strategy,
                  steps=args.steps, num_samples=args.num_samples, draws=draws,
                  command='python3 scripts/interval_coverage.py ' + ' '.join(argv or sys.argv[1:]))
    for key in ('fid', 'kid'):
        values = np.array([d[key] for d in draws])
        if not np.isfinite(values).all():
            continue
        covered = [d[f'{key}_low'] <= other[key] <= d[f'{key}_high']
                   for i, d in enumerate(draws) for j, other in enumerate(draws) if i != j]
        result[key] = dict(mean=float(values.mean()), sd_across_draws=float(values.std(ddof=1)),
                           mean_interval_half_width=float(np.mean([(d[f'{key}_high'] - d[f'{key}_low']) / 2
                                                                   for d in draws])),
                           covers_a_fresh_draw=float(np.mean(covered)),
                           covers_the_mean=float(np.mean([d[f'{key}_low'] <= values.mean() <= d[f'{key}_high']
                                                          for d in draws])))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix('.json'), result)
    what = 'real training digits' if model is None else f'{args.strategy}-{args.steps} samples of {model.path.name}'
    lines = [f'{args.draws} fresh sets of {args.num_samples} {what}; command: `{result["command"]}`.', '',
             '| score | mean over draws | sd across draws | mean interval half-width | an interval covers a fresh '
             'draw | covers the mean |', '|---|---|---|---|---|---|']
    lines += [f'| {key.upper()} | {r["mean"]:.3f} | {r["sd_across_draws"]:.3f} | {r["mean_interval_half_width"]:.3f} | '
              f'{100 * r["covers_a_fresh_draw"]:.0f} % | {100 * r["covers_the_mean"]:.0f} % |'
              for key, r in ((k, result[k]) for k in ('fid', 'kid') if k in result)]
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
