"""Train a DDPM on a folder of MNIST PNGs with denoising-diffusion-pytorch (Unet, GaussianDiffusion, Trainer).

Writes config.json, milestone checkpoints model-N.pt and sample grids sample-N.png into --results_folder.
Multi-GPU: accelerate launch train_ddpm_mnist.py ... (see docs/usage.md).
"""
import argparse
from typing import Any, Sequence
import shlex
import sys

from ddpm_mnist.cli.arguments import ArgumentParser, add_model_args, add_setting
from ddpm_mnist.settings import LOSS_LEVERS, PRESETS, SQUARE, TRAINING_FLAGS, model_overrides
from ddpm_mnist.utils import UserError, run_cli

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='seed',
                   help='seed: the original project exactly (36M-parameter Unet, 100k steps; needs a GPU); '
                        'small: a 1.4M-parameter Unet for CPU training; shipped: the recipe of the shipped model '
                        '(docs/training.md). Explicit flags override the preset. (default: %(default)s)')
    p.add_argument('--data_folder', default='./data/mnist_image_folder',
                   help='folder of training PNGs made by get_mnist_data.py (default: %(default)s)')
    add_model_args(p)
    g = p.add_argument_group('training (default: from the preset)')
    in_training_words = {'num_samples': dict(help='images in each sample-N.png (a square number)', rule=SQUARE)}
    for name in TRAINING_FLAGS:
        add_setting(g, name, **in_training_words.get(name, {}))
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='mixed precision (original: on); fp16 on CUDA, bf16 on CPU')
    g.add_argument('--mixed_precision_type', choices=['auto', 'fp16', 'bf16', 'bf16_compute'], default='auto',
                   help='precision used when --amp is on: fp16 or bf16 autocast (accelerate), or bf16_compute: the '
                        'Unet computes in bf16 from fp32 master weights (fast path only; see docs/speed.md) '
                        '(default: fp16 on CUDA, bf16 autocast on CPUs with native bf16)')
    g.add_argument('--calculate_fid', action='store_true',
                   help="compute the library's Inception FID at each milestone (downloads Inception weights; "
                        'slow; off by default)')
    add_setting(g, 'max_minutes')
    for loss_lever in LOSS_LEVERS:
        add_setting(g, loss_lever)
    g.add_argument('--conditional', action='store_true',
                   help='train a class-conditional model (the library\'s conditional Unet, trained on labels.csv) for '
                        'classifier-free guidance: inference_comparison.py --digits, --guidance_scale')
    add_setting(g, 'cond_drop_prob')
    add_setting(g, 'num_fid_samples', default=50000)
    p.add_argument('--fast_path', action=argparse.BooleanOptionalAction, default=True,
                   help='the training-speed levers of benchmarks/bench_training.py: training images decoded '
                        'once into memory, channels_last with layout-aware linear attention, fused Adam, foreach '
                        'EMA; same maths. --no-fast_path runs the library\'s plain step (PNG decoding in DataLoader '
                        'workers), as do runs of several processes (accelerate launch) (default: on)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='torch.compile the Unet for training (fast path only; the first steps compile it). '
                        'Default: on for CPU training, off on GPUs (docs/speed.md says why)')
    add_setting(p, 'num_workers', default=2)
    p.add_argument('--init_from', default=None,
                   help='start from these weights (online and EMA): the shipped '
                        'ddpm_mnist/pretrained/ddpm_mnist_small.safetensors, '
                        'an exported model or any model-N.pt, with a fresh optimiser and --lr_warmup_steps (default '
                        '200 here); they must be the model this run trains. The parent\'s history goes into the new '
                        'run\'s provenance')
    p.add_argument('--resume', default='auto',
                   help='auto: continue from the latest milestone in the results folder; N: from milestone N '
                        '(must be the latest); none: start fresh (refused if milestones exist) (default: auto)')
    p.add_argument('--device', choices=['auto', 'cuda', 'mps', 'cpu'], default='auto',
                   help='auto picks CUDA, then MPS, then CPU (under accelerate launch, accelerate decides)')
    add_setting(p, 'seed', help='random seed for reproducible training')
    args = p.parse_args(argv)
    return args


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of build_config, from the flags: explicit model, diffusion and training flags over the preset."""
    values = vars(args)
    overrides = model_overrides(values)
    if args.conditional:
        overrides['model'].update(num_classes=10, cond_drop_prob=0.1 if args.cond_drop_prob is None
                                  else args.cond_drop_prob)
    elif args.cond_drop_prob is not None:
        raise UserError('--cond_drop_prob applies to --conditional training only; add --conditional or drop it')
    for training_only in LOSS_LEVERS:  # diffusion settings of the loss
        if values[training_only] is not None:
            overrides['diffusion'][training_only] = values[training_only]
    return dict(preset=args.preset, model=overrides['model'], diffusion=overrides['diffusion'],
                training={name: values[name] for name in TRAINING_FLAGS if values[name] is not None}, amp=args.amp,
                calculate_fid=args.calculate_fid, seed=args.seed, fast_path=args.fast_path)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.training.command import train_model
    train_model(**config_kwargs(args), data_folder=args.data_folder, mixed_precision_type=args.mixed_precision_type,
                num_fid_samples=args.num_fid_samples, compile=args.compile, num_workers=args.num_workers,
                resume=args.resume, init_from=args.init_from, max_minutes=args.max_minutes, device=args.device,
                command=shlex.join(['python3', 'train_ddpm_mnist.py', *(sys.argv[1:] if argv is None else argv)]))


if __name__ == '__main__':
    run_cli(main)
