"""Export the EMA Unet of a training checkpoint as safetensors plus its config JSON (what the repo ships).

    python -m ddpm_mnist.export runs/shipped/model-30.pt ddpm_mnist/pretrained/ddpm_mnist_small --raw_dir ../shared/data/mnist-full

When OUTPUT.safetensors exists already (the shipped model), the candidate and it are first scored with the same
command (DDIM-50, eta 1, N = 1000, seed 0, project metrics against the MNIST test split), and a candidate further
from real digits is refused unless --force is given: a worse model is never shipped by accident. "Further" is FID
divided by the real-data floor (real training digits, same N, at the model's own image size): each model is scored
at its own size, where the floors differ (28 px against 32 px), so the ratio is the common unit.
"""
from __future__ import annotations

import argparse
from collections import namedtuple
from pathlib import Path
from typing import Callable, Sequence

from .hints import PathLike
from .settings import add_data_root_arg, add_raw_dir_arg
from .utils import UserError, run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='training checkpoint model-N.pt')
    p.add_argument('output', help='output path without suffix; .safetensors and .json are written')
    add_raw_dir_arg(p, 'MNIST IDX folder (offline) for the comparison with the current model, e.g. '
                       '../shared/data/mnist-full; default: torchvision download')
    add_data_root_arg(p)
    p.add_argument('--num_samples', type=int, default=1000,
                   help='images per model in the comparison (default: %(default)s)')
    p.add_argument('--force', action='store_true',
                   help='export even when the candidate scores worse than the model it replaces (say so in the '
                        'notes that go with it)')
    p.add_argument('--no-compare', dest='compare', action='store_false',
                   help='skip the comparison (an output that does not exist yet is never compared)')
    args = p.parse_args(argv)
    from .validation import at_least, check_flags
    check_flags(vars(args), extra={'num_samples': at_least(10)})
    return args


GateScore = namedtuple('GateScore', 'fid floor image_size')  # floor: FID of N real training digits, same size


def ratio(score: GateScore) -> float:
    """FID in units of the real-data floor: 1 is as close to the test digits as real training digits are."""
    return score.fid / score.floor


def compare_with_current(candidate: PathLike, current: PathLike, *, raw_dir: PathLike | None, data_root: PathLike,
                         num_samples: int, log: Callable[[str], None] = print) -> tuple[GateScore, GateScore]:
    """(candidate, current) scored with the same command: DDIM-50, eta 1, N images, seed 0, each model at its own
    image size (as the training curve and the sweep do), with the floor at that size and N."""
    from .checkpoints import read_weights
    from .curve import CurveSettings, score_milestone
    from .data import load_split
    from .device import pick_device
    from .intervals import interval_cell
    from .metrics import Evaluator
    from .sampler_table import resolve_steps
    from .sampling import default_precision
    device = pick_device('auto')
    reference, _ = load_split('test', raw_dir, data_root)
    train, _ = load_split('train', raw_dir, data_root)
    gates = []
    for name, path in (('candidate', candidate), ('current', current)):
        diffusion_config = read_weights(path).config['diffusion']
        size = diffusion_config['image_size']
        settings = CurveSettings(steps=resolve_steps('ddim', None, diffusion_config['timesteps']), eta=1.0,
                                 num_samples=num_samples, seed=0, batch_size=100, precision=default_precision(device))
        evaluator = Evaluator(reference, train, image_size=size, seed=0)
        scores = score_milestone(path, evaluator, settings, device)
        gate = GateScore(scores['fid'], evaluator.score(evaluator.floor_images(num_samples))['fid'], size)
        log(f'{name} {path}: DDIM-50, eta 1, N = {num_samples}, seed 0: FID {interval_cell(scores, "fid")} = '
            f'{ratio(gate):.2f}x the floor {gate.floor:.2f} ({size} px), IS '
            f'{interval_cell(scores, "inception_score")}, confidence {scores["confidence"]:.3f}, smallest class '
            f'{scores["min_class_share"]:.3f}')
        gates.append(gate)
    return tuple(gates)


def export_model(checkpoint: PathLike, output: PathLike, *, raw_dir: PathLike | None = None,
                 data_root: PathLike = './data', num_samples: int = 1000, force: bool = False,
                 compare: bool = True) -> Path:
    """Export `checkpoint` to OUTPUT.{safetensors,json}, refusing a candidate that scores worse than the model
    already there (unless force)."""
    from .checkpoints import export_ema
    current = Path(output).with_suffix('.safetensors')
    if compare and current.is_file():
        new, old = compare_with_current(checkpoint, current, raw_dir=raw_dir, data_root=data_root,
                                        num_samples=num_samples)
        if ratio(new) > ratio(old) and not force:
            raise UserError(f'{checkpoint} scores worse than the current {current} (FID {new.fid:.2f} = '
                            f'{ratio(new):.2f}x its floor against {old.fid:.2f} = {ratio(old):.2f}x, same command); '
                            'train longer, or pass --force to replace it anyway')
    path = export_ema(checkpoint, output)
    print(f'wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix(".json")}')
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    export_model(args.checkpoint, args.output, raw_dir=args.raw_dir, data_root=args.data_root,
                 num_samples=args.num_samples, force=args.force, compare=args.compare)


if __name__ == '__main__':
    run_cli(main)
