"""Export the EMA Unet of a training checkpoint as safetensors plus its config JSON (what the repo ships).

    python -m ddpm_mnist.cli.export runs/shipped/model-30.pt ddpm_mnist/pretrained/ddpm_mnist_small \
        --raw_dir ../shared/data/mnist-full

When OUTPUT.safetensors exists already (the shipped model), the candidate and it are first scored with the same
command (DDIM-50 at eta 0, the deterministic ODE sampler, and at eta 1, the stochastic one; a distilled student with
its own consistency sampler at 1, 2 and 4 steps instead; N = 1000, seed 0, the same x_T for both models; project
metrics against the MNIST test split), and a worse candidate is refused unless
--force is given: a worse model is never shipped by accident. The score is FID divided by the real-data floor (real
training digits, same N, at the model's own image size): each model is scored at its own size, where the floors
differ (28 px against 32 px), so the ratio is the common unit. What decides is the mean of the samplers' ratios
(the project compares them all, so no one alone may choose the model); and a candidate clearly worse at any one
(its paired FID difference above 0 with 95 % confidence, for models of one image size; else a ratio 10 % higher)
is refused even when the mean improves.
"""
from __future__ import annotations

import argparse
from collections import namedtuple
from pathlib import Path
from typing import Callable, Sequence

from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_data_root_arg, add_raw_dir_arg
from ddpm_mnist.utils import BadValue, PathLike, UserError, run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='training checkpoint model-N.pt')
    p.add_argument('output', help='output path without suffix; .safetensors and .json are written')
    add_raw_dir_arg(p, 'MNIST IDX folder (offline) for the comparison with the current model, e.g. '
                       '../shared/data/mnist-full; default: torchvision download')
    add_data_root_arg(p)
    add_setting(p, 'num_samples', rule=at_least(10), default=1000,
                help='images per model in the comparison (default: %(default)s)')
    p.add_argument('--force', action='store_true',
                   help='export even when the candidate scores worse than the model it replaces (say so in the '
                        'notes that go with it)')
    p.add_argument('--weights_dtype', choices=tuple(WEIGHT_DTYPES), default='fp32',
                   help='the type the weights are stored in: fp16 halves the file (a width-48 Unet: 11.6 MB in fp32, '
                        '5.8 MB in fp16, under the 10 MB the repository ships); they load into fp32 modules and '
                        'are sampled in the precision asked for, as any export (default: %(default)s)')
    p.add_argument('--no-compare', dest='compare', action='store_false',
                   help='skip the comparison (an output that does not exist yet is never compared)')
    args = p.parse_args(argv)
    return args


# floor: FID of N real training digits at the same size; reference_fit: the test split's Gaussian the FID is taken to
GateScore = namedtuple('GateScore', 'fid floor image_size features reference_fit')
GATE_ETAS = (0.0, 1.0)  # DDIM's deterministic (ODE) and stochastic samplers: a model must serve both
STUDENT_GATE_STEPS = (1, 2, 4)  # a distilled student's own sampler, at the step counts it is made for
CLEARLY_WORSE_RATIO = 1.1  # models of different image sizes have no paired difference: 10 % further counts as worse
WEIGHT_DTYPES = {'fp32': 'float32', 'fp16': 'float16'}  # bf16 is left out: 8 bits of mantissa round weights 8x coarser


def ratio(score: GateScore) -> float:
    """FID in units of the real-data floor: 1 is as close to the test digits as real training digits are."""
    return score.fid / score.floor


def gate_configs(diffusion) -> list:
    """The samplers a model is gated with (SamplerSettings): DDIM-50 at each of GATE_ETAS for a diffusion model, the
    consistency sampler at each of STUDENT_GATE_STEPS for a distilled student."""
    from ddpm_mnist.sampling.registry import SamplerSettings
    total = diffusion.num_timesteps
    if getattr(diffusion, 'student', None):
        return [SamplerSettings.resolve('consistency', steps, total_timesteps=total) for steps in STUDENT_GATE_STEPS]
    return [SamplerSettings.resolve('ddim', eta=eta, total_timesteps=total) for eta in GATE_ETAS]


def mean_ratio(gates: dict[str, GateScore]) -> float:
    """What decides: the mean over the gate's samplers of FID in floor units."""
    return sum(ratio(g) for g in gates.values()) / len(gates)


def gate_scores(path: PathLike, *, raw_dir: PathLike | None, data_root: PathLike, num_samples: int,
                log: Callable[[str], None] = print) -> dict[str, GateScore]:
    """One model's gate, by sampler label: each of its gate_configs, N images from seed 0's x_T, at its own image
    size."""
    from ddpm_mnist.api import load_model
    from ddpm_mnist.evaluation.intervals import interval_cell
    from ddpm_mnist.evaluation.reference import digits_evaluator, floor_fid
    from ddpm_mnist.sampling.loop import sample
    from ddpm_mnist.model.config import trained_on
    model = load_model(path)
    diffusion, size = model.diffusion, model.image_size
    evaluator = digits_evaluator(image_size=size, raw_dir=raw_dir, data_root=data_root,
                                 dataset=trained_on(model.config))
    floor = floor_fid(evaluator, num_samples)
    gates = {}
    for settings in gate_configs(diffusion):
        images = sample(diffusion, settings, num_samples=num_samples, batch_size=100, seed=0)
        scores = evaluator.score(images)
        gate = gates[settings.label] = GateScore(scores['fid'], floor, size, evaluator.features(images),
                                                 evaluator.reference_fit)
        log(f'{path}: {settings.label}, N = {num_samples}, seed 0: FID {interval_cell(scores, "fid")} = '
            f'{ratio(gate):.2f}x the floor {floor:.2f} ({size} px), IS '
            f'{interval_cell(scores, "inception_score")}, smallest class {scores["min_class_share"]:.3f}')
    return gates


def clearly_worse(new: GateScore, old: GateScore) -> str | None:
    """Why `new` is clearly worse than `old` at one sampler, or None: the paired FID difference (same x_T, same
    reference) above 0 with 95 % confidence, or, across image sizes, a floor ratio 10 % higher."""
    from ddpm_mnist.evaluation.intervals import paired_fid_difference
    if new.image_size == old.image_size:
        difference = paired_fid_difference(new.features, old.features, new.reference_fit)
        return (f'FID +{difference.value:.2f} [{difference.low:+.2f}, {difference.high:+.2f}]'
                if difference.low > 0 else None)
    return (f'{ratio(new):.2f}x against {ratio(old):.2f}x the floor'
            if ratio(new) > CLEARLY_WORSE_RATIO * ratio(old) else None)


def compare_with_current(candidate: PathLike, current: PathLike, *, raw_dir: PathLike | None, data_root: PathLike,
                         num_samples: int, log: Callable[[str], None] = print
                         ) -> tuple[dict[str, GateScore], dict[str, GateScore]]:
    """(candidate, current) gate scores, both models scored with the same command."""
    new, old = (gate_scores(path, raw_dir=raw_dir, data_root=data_root, num_samples=num_samples, log=log)
                for path in (candidate, current))
    return new, old


def refusal(new: dict[str, GateScore], old: dict[str, GateScore]) -> str | None:
    """Why the candidate `new` may not replace `old`, or None: a worse mean ratio over the samplers, or clearly worse
    at any one of them."""
    mean_new, mean_old = mean_ratio(new), mean_ratio(old)
    if mean_new > mean_old:
        return f'its mean FID over {" and ".join(new)} is {mean_new:.2f}x its floor against {mean_old:.2f}x'
    for label in new:
        worse = clearly_worse(new[label], old[label])
        if worse:
            return f'it is clearly worse with {label} ({worse})'
    return None


def check_output(output: Path) -> None:
    """OUTPUT must name a file (its .safetensors and .json are written beside each other) under folders that are
    folders: one line otherwise, before any scoring."""
    if output.name in ('', '.', '..') or output.is_dir():
        raise BadValue(f'output {output} names a folder, not a file; give a path without a suffix, e.g. '
                       f'{Path(output) / "ddpm_mnist_small"}')
    blocking = next((parent for parent in output.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise BadValue(f'output {output}: {blocking} is a file, not a folder; choose another output path')


def export_model(checkpoint: PathLike, output: PathLike, *, raw_dir: PathLike | None = None,
                 data_root: PathLike = './data', num_samples: int = 1000, force: bool = False,
                 compare: bool = True, weights_dtype: str = 'fp32') -> Path:
    """Export `checkpoint` to OUTPUT.{safetensors,json} with its weights stored as `weights_dtype`, refusing a
    candidate that scores worse than the model already there (unless force)."""
    import torch
    from ddpm_mnist.model.checkpoints import export_ema
    if weights_dtype not in WEIGHT_DTYPES:
        raise BadValue(f'weights_dtype {weights_dtype!r} is not one of {", ".join(WEIGHT_DTYPES)}')
    check_output(Path(output))
    current = Path(output).with_suffix('.safetensors')
    if compare and current.is_file():
        new, old = compare_with_current(checkpoint, current, raw_dir=raw_dir, data_root=data_root,
                                        num_samples=num_samples)
        if set(new) != set(old):
            raise UserError(f'{checkpoint} and the current {current} are not the same kind of model (gated with '
                            f'{", ".join(new)} against {", ".join(old)}): a student replaces a student, a diffusion '
                            'model a diffusion model; choose another output')
        refused = refusal(new, old)
        print(f'gate: mean FID / floor over {" and ".join(new)}: candidate {mean_ratio(new):.2f}x, current '
              f'{mean_ratio(old):.2f}x; ' + (f'refused: {refused}' if refused else 'the candidate is not worse'))
        if refused and not force:
            raise UserError(f'{checkpoint} scores worse than the current {current}: {refused} (same command); '
                            'train longer, or pass --force to replace it anyway')
    path = export_ema(checkpoint, output, dtype=getattr(torch, WEIGHT_DTYPES[weights_dtype]))
    print(f'wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix(".json")}')
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    export_model(args.checkpoint, args.output, raw_dir=args.raw_dir, data_root=args.data_root,
                 num_samples=args.num_samples, force=args.force, compare=args.compare,
                 weights_dtype=args.weights_dtype)


if __name__ == '__main__':
    run_cli(main)
