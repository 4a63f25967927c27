"""Where the near-copy threshold of the metrics comes from: the pixel distance of each real MNIST test digit (never
trained on) to its nearest training digit, over the full 60,000-digit training split, at each training image size.

A generated digit counts as a near-copy when it is closer to a training digit than
ddpm_mnist.evaluation.metrics.NEAR_COPY_L2.
Unseen real digits are the base rate: the threshold is set where about 0.1 % of them fall below it, so a model
that draws fresh digits from the data distribution scores about 0.1 % and one that copies scores more.

  python3 scripts/near_copy_threshold.py --raw_dir ../shared/data/mnist-full
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence


from ddpm_mnist.cli.arguments import ArgumentParser, add_mnist_args
from ddpm_mnist.utils import write_json

QUANTILES = (0.001, 0.005, 0.01, 0.05, 0.5)
THRESHOLDS = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mnist_args(p)
    p.add_argument('--sizes', default='28,32', help='training image sizes to measure at (default: %(default)s)')
    p.add_argument('--output', default='runs/near_copy_threshold', help='output stem for .json and .md '
                   '(default: %(default)s)')
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import numpy as np

    from ddpm_mnist.evaluation.classifier import as_training_resolution, to_classifier_input
    from ddpm_mnist.datasets import load_split
    from ddpm_mnist.evaluation.metrics import NEAR_COPY_L2, nearest_train_distance

    test, _ = load_split('test', args.raw_dir, args.data_root)
    train, _ = load_split('train', args.raw_dir, args.data_root)
    result = dict(test_digits=len(test), train_digits=len(train), current_threshold=NEAR_COPY_L2, sizes={})
    for size in map(int, args.sizes.split(',')):
        train_pixels = to_classifier_input(as_training_resolution(train, size)).flatten(1).numpy()
        distances = nearest_train_distance(as_training_resolution(test, size), train_pixels)
        result['sizes'][size] = dict(
            quantiles={str(q): float(np.quantile(distances, q)) for q in QUANTILES},
            share_below={str(t): float((distances < t).mean()) for t in (*THRESHOLDS, NEAR_COPY_L2)})
        quantiles = result['sizes'][size]['quantiles'].values()
        print(f'{size} px: test-to-train distance quantiles '
              + ', '.join(f'{100 * q:g} %: {v:.3f}' for q, v in zip(QUANTILES, quantiles)), flush=True)
    lines = [f'Nearest-training-digit pixel distance (L2 on 28x28 in [0, 1]) of the {len(test):,} MNIST test digits '
             f'to the {len(train):,} training digits; `python3 scripts/near_copy_threshold.py`.', '',
             '| size | ' + ' | '.join(f'{100 * q:g} % quantile' for q in QUANTILES) + ' | '
             + ' | '.join(f'share < {t:g}' for t in THRESHOLDS) + ' |',
             '|' + '---|' * (1 + len(QUANTILES) + len(THRESHOLDS))]
    for size, row in result['sizes'].items():
        lines.append(f'| {size} px | ' + ' | '.join(f'{v:.3f}' for v in row['quantiles'].values()) + ' | '
                     + ' | '.join(f'{100 * row["share_below"][str(t)]:.2f} %' for t in THRESHOLDS) + ' |')
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix('.json'), result)
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
