"""Train a DDPM on a folder of MNIST PNGs with denoising-diffusion-pytorch (Unet, GaussianDiffusion, Trainer).

Writes config.json, milestone checkpoints model-N.pt and sample grids sample-N.png into --results_folder.
Multi-GPU: accelerate launch train_ddpm_mnist.py ... (see docs/usage.md).
"""
import argparse

from ddpm_mnist.settings import PRESETS, TRAINING_FLAGS, add_model_args
from ddpm_mnist.utils import run_cli
from ddpm_mnist.validation import SQUARE, check_flags

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='seed',
                   help='seed: the original project exactly (36M-parameter Unet, 100k steps; needs a GPU); '
                        'small: a 1.4M-parameter Unet that reaches recognisable digits in about an hour on a '
                        '2-core CPU. Explicit flags override the preset. (default: %(default)s)')
    p.add_argument('--data_folder', default='./data/mnist_image_folder',
                   help='folder of training PNGs made by get_mnist_data.py (default: %(default)s)')
    add_model_args(p)
    g = p.add_argument_group('training (default: from the preset)')
    for name, (kind, help_text) in TRAINING_FLAGS.items():
        g.add_argument(f'--{name}', type=kind, help=help_text)
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='mixed precision (original: on); fp16 on CUDA, bf16 on CPU')
    g.add_argument('--mixed_precision_type', choices=['auto', 'fp16', 'bf16', 'bf16_compute'], default='auto',
                   help='precision used when --amp is on: fp16 or bf16 autocast (accelerate), or bf16_compute: the '
                        'Unet computes in bf16 from fp32 master weights (fast path only; see docs/speed.md) '
                        '(default: fp16 on CUDA, bf16 autocast on CPUs with native bf16)')
    g.add_argument('--calculate_fid', action='store_true',
                   help="compute the library's Inception FID at each milestone (downloads Inception weights; "
                        'slow; off by default)')
    g.add_argument('--num_fid_samples', type=int, default=50000, help='samples per FID computation')
    p.add_argument('--fast_path', action=argparse.BooleanOptionalAction, default=True,
                   help='the training-speed levers measured by benchmarks/bench_training.py: training images decoded '
                        'once into memory, channels_last with layout-aware linear attention, fused Adam, foreach '
                        'EMA; same maths. --no-fast_path runs the library\'s plain step (PNG decoding in DataLoader '
                        'workers), as do runs of several processes (accelerate launch) (default: on)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='torch.compile the Unet for training (fast path only; about a minute of compiling first). '
                        'Default: on for CPU training, where benchmarks/bench_training.py measured it faster; off '
                        'on GPUs, where it was not measured')
    p.add_argument('--num_workers', type=int, default=2,
                   help='DataLoader worker processes, used with --no-fast_path only (default: %(default)s)')
    p.add_argument('--resume', default='auto',
                   help='auto: continue from the latest milestone in the results folder; N: from milestone N '
                        '(must be the latest); none: start fresh (refused if milestones exist) (default: auto)')
    p.add_argument('--device', choices=['auto', 'cuda', 'mps', 'cpu'], default='auto',
                   help='auto picks CUDA, then MPS, then CPU (under accelerate launch, accelerate decides)')
    p.add_argument('--seed', type=int, default=None, help='random seed for reproducible training')
    args = p.parse_args(argv)
    check_flags(args, extra={'num_samples': SQUARE})
    return args


def main(argv=None):
    args = parse_args(argv)
    from ddpm_mnist.training import train_from_args
    train_from_args(args, argv)


if __name__ == '__main__':
    run_cli(main)
