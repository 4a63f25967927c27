#!/usr/bin/env python3
"""Overlay the loss.csv of training runs (e.g. the same recipe with --no-fast_path and with the fast path) and
print each run's mean loss over step windows, so a speed change can be shown not to change the training.

    python benchmarks/compare_loss_curves.py /tmp/lc/no-fast_path /tmp/lc/fast_path \
        --output benchmarks/results/loss_curves.png
"""
import argparse

from ddpm_mnist.cli.arguments import ArgumentParser
from typing import Sequence
import sys
from pathlib import Path



def main(argv: Sequence[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+',
                   help='training results folders, each with a loss.csv; FOLDER:FIRST shifts a run continued with '
                        '--init_from so its step 1 is drawn at FIRST (its parent\'s last step + 1)')
    p.add_argument('--last', type=int, default=None,
                   help='draw only the last this many steps of runs drawn without a shift (a parent ending where '
                        'its child begins)')
    p.add_argument('--window', type=int, default=25, help='steps per averaging window (default: %(default)s)')
    p.add_argument('--output', default='benchmarks/results/loss_curves.png', help='figure to write')
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    from ddpm_mnist.training.run_folder import read_loss_log

    fig, ax = plt.subplots(figsize=(6, 4))
    for spec in args.runs:
        run, _, first = spec.partition(':')
        losses = read_loss_log(run)
        if not losses:
            sys.exit(f'error: {run} has no loss.csv')
        steps, values = np.array(sorted(losses)), np.array([losses[s] for s in sorted(losses)])
        if first:
            steps = steps + int(first) - 1
        elif args.last:
            steps, values = steps[-args.last:], values[-args.last:]
        ax.plot(steps, values, alpha=0.25)
        windows = [values[i:i + args.window] for i in range(0, len(values), args.window)]
        centres = [steps[i:i + args.window].mean() for i in range(0, len(values), args.window)]
        ax.plot(centres, [w.mean() for w in windows], 'o-', color=ax.lines[-1].get_color(), label=Path(run).name)
        print(f'{Path(run).name}: mean loss per {args.window} steps: ' +
              ' '.join(f'{w.mean():.4f}±{w.std(ddof=1) / len(w) ** 0.5:.4f}' for w in windows))
    ax.set_xlabel('step')
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
