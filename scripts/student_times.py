"""Choose the intermediate time of a distilled student's 2-step sampling and write it into the student's record.

A consistency student sampled in 2 steps jumps from x_T to x0 at T-1, noises that estimate again to one more
boundary t and jumps once more. Which t is best is a property of the student, not of the method: Song et al. 2023
chose theirs by a search on FID. This script scores every other boundary as t (N samples from seed --seed, the same
x_T and noise for each t), against 10,000 training digits -- not the test digits the reported numbers use -- and,
with --write, stores the best as "sample_times" in the export's .json, which `--strategy consistency --sample_steps 2`
then follows. Other step counts keep their even spacing.

    python3 scripts/student_times.py --raw_dir ../shared/data/mnist-full --write                  # the shipped student
    python3 scripts/student_times.py --raw_dir ../shared/data/mnist-full --conditional --write    # the conditional one
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ddpm_mnist.api import load_model, sample
from ddpm_mnist.cli.arguments import ArgumentParser, add_raw_dir_arg, add_setting
from ddpm_mnist.datasets import load_split
from ddpm_mnist.evaluation.metrics import Evaluator, frechet_distance
from ddpm_mnist.sampling.samplers import Consistency
from ddpm_mnist.utils import UserError, read_json, run_cli, write_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--student', default=None, help='a student export (.safetensors with its .json) (default: the '
                                                   'shipped student)')
    p.add_argument('--conditional', action='store_true', help='the shipped conditional student')
    add_raw_dir_arg(p, 'MNIST IDX folder (offline); default: torchvision download')
    add_setting(p, 'num_samples', default=2000, help='samples per candidate time (default: %(default)s)')
    add_setting(p, 'seed', default=1, help='seed of the x_T and the noise (default: %(default)s; the reported '
                                           'numbers use seed 0)')
    p.add_argument('--write', action='store_true', help="store the best time in the student's .json")
    return p.parse_args(argv)


def training_reference(raw_dir: str | None, seed: int) -> np.ndarray:
    """10,000 training digits: what the candidates are scored against, so the test split stays unseen."""
    train, _ = load_split('train', raw_dir)
    return train[np.random.default_rng(seed).permutation(len(train))[:10000]]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    model = load_model(args.student, student=args.student is None, conditional=args.conditional)
    if not model.diffusion.student:
        raise UserError(f'{model.path} is not a distilled student; give one (distill_ddpm_mnist.py makes them)')
    record = Path(model.path).with_suffix('.json')
    if args.write and (Path(model.path).suffix != '.safetensors' or not record.is_file()):
        raise UserError(f'--write needs an export with its .json; export {model.path} first '
                        '(python -m ddpm_mnist.cli.export)')
    evaluator = Evaluator(training_reference(args.raw_dir, args.seed), image_size=model.diffusion.image_size[0],
                          seed=args.seed)
    boundaries = Consistency(model.diffusion).boundaries
    scores = {}
    for t in boundaries[1::2]:
        model.diffusion.student['sample_times'] = {'2': [boundaries[0], t]}
        images = sample(model, strategy='consistency', steps=2, n=args.num_samples, seed=args.seed, batch_size=250)
        scores[t] = frechet_distance(evaluator.features(images), evaluator.reference_fit)  # FID alone: no bootstrap
        print(f't = {t}: FID {scores[t]:.2f} against training digits', flush=True)
    best = min(scores, key=scores.get)
    print(f'best: 2 steps at {boundaries[0]}, {best} (FID {scores[best]:.2f}; even spacing, '
          f'{boundaries[len(boundaries) // 2]}: {scores.get(boundaries[len(boundaries) // 2], float("nan")):.2f})')
    if args.write:
        data = read_json(record)
        data['student']['sample_times'] = {'2': [boundaries[0], best]}
        data['student']['sample_times_search'] = dict(
            command=shlex.join(['python3', 'scripts/student_times.py', *(sys.argv[1:] if argv is None else argv)]),
            num_samples=args.num_samples, seed=args.seed, reference='10,000 training digits',
            fid_by_time={str(t): round(f, 3) for t, f in scores.items()})
        write_json(record, data)
        print(f'wrote sample_times into {record}')


if __name__ == '__main__':
    run_cli(main)
