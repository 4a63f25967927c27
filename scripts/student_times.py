"""Choose the intermediate times of a distilled student's few-step sampling and write them into its record.

A consistency student sampled in S steps jumps from x_T to x0 at T-1, noises that estimate again to a lower
boundary, jumps again, and so on. Which times are best is a property of the student, not of the method: Song et al.
2023 chose theirs by a search on FID, greedily, one time after another. So does this script: the 2-step time is
the best of every other boundary; for more steps (--steps 2,4) the times found so far are kept and the next one is
searched among every other boundary below the last (N samples from seed --seed, the same x_T and noise for every
candidate), each scored against 10,000 training digits -- not the test digits the reported numbers use -- and
against the even spacing on the same samples. With --write, the times of each S that are no worse than its even
spacing are stored as "sample_times" in the export's .json, which `--strategy consistency --sample_steps S` then
follows; an S whose even spacing scores better keeps it (its old times, if any, are removed). Other step counts
are untouched.

    python3 scripts/student_times.py --raw_dir ../shared/data/mnist-full --write                  # the shipped student
    python3 scripts/student_times.py --raw_dir ../shared/data/mnist-full --steps 2,4 --write      # 2 and 4 steps
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
from ddpm_mnist.settings import comma_ints, each, at_least
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
    add_setting(p, 'steps', type=comma_ints, rule=each(at_least(2)), default=[2],
                help='step counts to search, comma-separated, each at least 2; more than 2 steps are searched '
                     'greedily after the shorter ones (default: 2)')
    p.add_argument('--write', action='store_true', help="store the best times in the student's .json")
    return p.parse_args(argv)


def training_reference(raw_dir: str | None, seed: int) -> np.ndarray:
    """10,000 training digits: what the candidates are scored against, so the test split stays unseen."""
    train, _ = load_split('train', raw_dir)
    return train[np.random.default_rng(seed).permutation(len(train))[:10000]]


def greedy_times(score, boundaries: list[int], steps: int) -> tuple[list[int], dict[int, dict[int, float]]]:
    """Song et al.'s greedy search: from [T-1], each next time is the best of every other boundary below the last
    (leaving room for the times still to come), scored by score(times) with the earlier times kept. Returns the
    S times and, per stage k = 2..S, {candidate: FID}."""
    times, stages = [boundaries[0]], {}
    for k in range(2, steps + 1):
        room = steps - k  # boundaries that must stay below this one
        below = [t for i, t in enumerate(boundaries) if i % 2 and t < times[-1] and i < len(boundaries) - room]
        if not below:
            raise UserError(f'{steps} steps leave no boundary of the student to search below {times[-1]} for time '
                            f'{k} ({len(boundaries)} boundaries); search fewer steps')
        stages[k] = {t: score(times + [t]) for t in below}
        times.append(min(stages[k], key=stages[k].get))
    return times, stages


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
    def score(times: list[int]) -> float:
        """FID against the training digits of samples at these times (as many steps as times)."""
        model.diffusion.student['sample_times'] = {str(len(times)): times}
        images = sample(model, strategy='consistency', steps=len(times), n=args.num_samples, seed=args.seed,
                        batch_size=250)
        fid = frechet_distance(evaluator.features(images), evaluator.reference_fit)  # FID alone: no bootstrap
        print(f'{len(times)} steps at {", ".join(map(str, times))}: FID {fid:.2f} against training digits', flush=True)
        return fid

    def even_spacing(steps: int) -> list[int]:
        """The times the sampler takes for S steps when the record holds none."""
        model.diffusion.student['sample_times'] = {}
        sampler = Consistency(model.diffusion)
        sampler.set_timesteps(steps)
        return sampler.timesteps

    times, stages = greedy_times(score, boundaries, max(args.steps))
    found, even = {}, {}
    for steps in sorted(set(args.steps)):
        spread = even_spacing(steps)
        searched = spread[:-1] == times[:steps - 1] and spread[-1] in stages[steps]  # scored in the search already
        even[steps] = stages[steps][spread[-1]] if searched else score(spread)
        best = stages[steps][times[steps - 1]]
        print(f'best: {steps} steps at {", ".join(map(str, times[:steps]))} (FID {best:.2f}; even spacing '
              f'{", ".join(map(str, spread))}: {even[steps]:.2f})'
              + ('' if best <= even[steps] else ': the even spacing is kept'))
        if best <= even[steps]:
            found[str(steps)] = times[:steps]
    if args.write:
        data = read_json(record)
        recorded = data['student'].get('sample_times')
        tuned = {k: v for k, v in recorded.items() if k not in {str(s) for s in args.steps}} if isinstance(
            recorded, dict) else {}  # a malformed record (which sampling refuses) is replaced
        data['student']['sample_times'] = dict(sorted({**tuned, **found}.items()))
        data['student']['sample_times_search'] = dict(
            command=shlex.join(['python3', 'scripts/student_times.py', *(sys.argv[1:] if argv is None else argv)]),
            num_samples=args.num_samples, seed=args.seed, reference='10,000 training digits',
            fid_by_time={str(k): {str(t): round(f, 3) for t, f in stage.items()} for k, stage in stages.items()},
            fid_even_spacing={str(k): round(f, 3) for k, f in even.items()})
        write_json(record, data)
        print(f'wrote sample_times into {record}')


if __name__ == '__main__':
    run_cli(main)
