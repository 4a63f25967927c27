"""Sample a trained DDPM with DDPM (ancestral, T steps), DDIM or a newer solver (S steps), time it and save an
image grid; or (--compare) run every sampler from the same noise and score them.

Examples:
  python3 inference_comparison.py --strategy ddpm --milestone 10
  python3 inference_comparison.py --strategy ddim --milestone 10 --sample_steps 100
  python3 inference_comparison.py --strategy dpmpp_2m_sde --sample_steps 20
  python3 inference_comparison.py --strategy ddim --checkpoint path/to/model-3.pt --ddim_eta 0.5
  python3 inference_comparison.py --compare --num_samples 1000 --raw_dir ../shared/data/mnist-full
  python3 inference_comparison.py --compare --num_samples 10000 --compare_ddpm_samples 1000 --compare_student \
      --raw_dir ../shared/data/mnist-full      # the headline sweep: N = 10,000, DDPM on 1,000 of its x_T
Without --milestone or --checkpoint the shipped pretrained model is used.
"""
import argparse
from typing import Sequence

from ddpm_mnist.cli.arguments import (ArgumentParser, add_data_root_arg, add_model_args, add_raw_dir_arg, add_setting,
                                      parse_digits)
from ddpm_mnist.settings import SETTINGS
from ddpm_mnist.utils import run_cli

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting(p, 'strategy', default='ddpm',
                help=f'{SETTINGS["strategy"].help}. DDPM always runs all T steps; the others S = --sample_steps')
    add_setting(p, 'milestone')
    p.add_argument('--checkpoint', help='load this file instead (model-N.pt of any denoising-diffusion-pytorch '
                                        'Trainer, or a .safetensors export)')
    add_setting(p, 'results_folder', help='training results folder; grids go to '
                                          'RESULTS_FOLDER/inference_milestone_N/STRATEGY/ (default: '
                                          './results_mnist_ddpm, as the original; ./runs for the shipped model)')
    add_setting(p, 'sample_steps')
    add_setting(p, 'ddim_eta', default=0.0)
    add_setting(p, 'num_samples', help='number of images to generate (default: 25; with --compare 1000 per config, '
                                       '--quick 300)')
    add_setting(p, 'batch_size', help='images per forward pass (default: 100 on a CPU, 500 on a GPU)')
    add_setting(p, 'seed', default=0, help='seed for the initial noise and per-step noise; the same seed gives every '
                                           'sampler the same starting noise x_T per image')
    p.add_argument('--device', default='auto', help='auto (CUDA, then MPS, then CPU), cuda, mps or cpu')
    p.add_argument('--precision', choices=['auto', 'fp32', 'bf16', 'fp16'], default='auto',
                   help='precision of the Unet: bf16 runs it with bf16 weights, fp16 under autocast (CUDA only); '
                        'auto = bf16 on CPUs with native bf16, else fp32 (the faster there; docs/speed.md) '
                        '(default: %(default)s)')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels_last memory layout for the Unet (faster convolutions) (default: on)')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the Unet (the first calls compile it; whether it pays off: docs/speed.md)')
    p.add_argument('--conditional', action='store_true',
                   help='use the shipped class-conditional model '
                        '(ddpm_mnist/pretrained/ddpm_mnist_conditional.safetensors) '
                        'instead of the unconditional one')
    p.add_argument('--digits',
                   help='conditional models only: the digits to draw, e.g. 7 or 0,3,9, in equal numbers, one digit per '
                        'grid row (default on a conditional model: all ten)')
    add_setting(p, 'guidance_scale', default=1.0)
    p.add_argument('--guidance_remove_parallel', action='store_true',
                   help="the library's guidance variant: remove the part of (eps_c - eps_u) parallel to eps_c")
    add_setting(p, 'guidance_rescaled_phi', default=0.0)
    p.add_argument('--use_online_weights', action='store_true',
                   help='sample the raw online weights instead of the EMA weights (worse; for debugging)')
    add_model_args(p)
    c = p.add_argument_group('comparison sweep (--compare)')
    c.add_argument('--compare', action='store_true',
                   help='run every --compare_samplers from the same noise (DDIM at --compare_steps x --compare_etas, '
                        'the other solvers at --compare_solver_steps), score them and write '
                        'comparison.{json,csv,md,png} plus one grid per config')
    c.add_argument('--quick', action='store_true',
                   help='a CPU-sized --compare: DDIM at 10 and 50 steps (eta 0), DPM-Solver++(2M) and UniPC at 10, '
                        '300 images each from the same x_T; says whether DDIM-10 and DDIM-50 differ at that N')
    add_setting(c, 'compare_samplers')
    add_setting(c, 'compare_steps')
    add_setting(c, 'compare_etas')
    add_setting(c, 'compare_solver_steps')
    c.add_argument('--compare_ddpm', action=argparse.BooleanOptionalAction, default=True,
                   help='include the DDPM (T steps) row; --no-compare_ddpm drops it from --compare_samplers '
                        '(default: on)')
    add_setting(c, 'compare_ddpm_samples')
    c.add_argument('--compare_student', nargs='?', const='shipped', metavar='CHECKPOINT',
                   help="add a distilled student's rows (its consistency sampler at --compare_student_steps, from "
                        'the same x_T and digits): its run folder or export, or with no value the shipped student '
                        'of the swept model; it must have been distilled from the swept model')
    add_setting(c, 'compare_student_steps')
    add_raw_dir_arg(c, 'MNIST IDX folder for the reference (test split) and training digits, offline (e.g. '
                       '../shared/data/mnist-full; for a model trained on another dataset, its raw files); default: '
                       'torchvision download cached in --data_root, else the shipped test-split statistics (FID, IS, '
                       'confidence, class balance only)')
    add_data_root_arg(c)
    c.add_argument('--inception_weights',
                   help='also compute standard Inception FID (pytorch-fid) from this local weights file '
                        '(pt_inception-2015-12-05-6726825d.pth); never downloads')
    c.add_argument('--second_classifier', default='auto',
                   help='a second, independently trained feature network that scores every row too (FID_b), so the '
                        'table can say which orderings both feature spaces agree on: auto (the shipped '
                        'ddpm_mnist/pretrained/mnist_classifier_wide.safetensors, when MNIST is on disk), none, or a '
                        'file '
                        '(default: %(default)s)')
    args = p.parse_args(argv)
    if args.digits is not None:
        args.digits = parse_digits(args.digits)
    if args.quick:
        args.compare = True
    return args


MODEL_FLAGS = ('checkpoint', 'milestone', 'results_folder', 'device', 'precision', 'channels_last', 'compile',
               'use_online_weights', 'conditional')
GRID_FLAGS = ('strategy', 'sample_steps', 'ddim_eta', 'num_samples', 'batch_size', 'seed', 'digits', 'guidance_scale',
              'guidance_remove_parallel', 'guidance_rescaled_phi')
SWEEP_FLAGS = ('quick', 'compare_samplers', 'compare_ddpm', 'compare_steps', 'compare_etas', 'compare_solver_steps',
               'compare_ddpm_samples', 'compare_student', 'compare_student_steps', 'num_samples', 'batch_size', 'seed',
               'raw_dir', 'data_root', 'inception_weights', 'second_classifier', 'digits', 'guidance_scale',
               'guidance_remove_parallel', 'guidance_rescaled_phi')


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.cli.inference import run_comparison, sample_grid
    from ddpm_mnist.settings import model_overrides
    values = vars(args)
    model = {name: values[name] for name in MODEL_FLAGS}
    model['overrides'] = model_overrides(values)
    if args.compare:
        return run_comparison(**model, **{name: values[name] for name in SWEEP_FLAGS})
    return sample_grid(**model, **{name: values[name] for name in GRID_FLAGS})


if __name__ == '__main__':
    run_cli(main)
