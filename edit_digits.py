"""Edit digits with a trained model (no training): inpainting, SDEdit, DDIM inversion and interpolation.

Examples:
  python3 edit_digits.py inpaint --input a.png b.png --mask bottom             # RePaint on the DDPM chain
  python3 edit_digits.py inpaint --input a.png --mask mask.png --steps 50       # the fast variant, on DDIM steps
  python3 edit_digits.py sdedit --input sketch.png --strength 0.5 --strategy dpmpp_2m --steps 20
  python3 edit_digits.py invert --input a.png --steps 50                        # prints the round-trip error
  python3 edit_digits.py interpolate --input a.png b.png --frames 8 --gif
  python3 edit_digits.py interpolate --seeds 3 7 --frames 8
Without --checkpoint or --milestone the shipped model is used (--conditional: the shipped class-conditional one,
with --digits D to condition on a digit). Inputs of any size or mode are converted as the
training images were (grayscale, resized to the model's size); the conversion is printed. Each run writes a grid
PNG with its record (the results alone, in input order) and, for inpainting and SDEdit, a second grid of input,
mask and result side by side, under RESULTS_FOLDER/<model>/edit/.
"""
import argparse
from typing import Sequence
import math

from ddpm_mnist.utils import run_cli
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting
from ddpm_mnist.settings import Rule, at_least, fraction

MASK_NAMES = ('top', 'bottom', 'left', 'right', 'centre')
STEPS, ETA = at_least(1), fraction(closed_top=True)
STRENGTH = Rule(lambda v: math.isfinite(v) and 0 < v <= 1, 'a number in (0, 1]')
EDIT_DIGITS = Rule(lambda v: all(0 <= d <= 9 for d in v), 'digits 0-9, one for all inputs or one per input')


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('model')
    g.add_argument('--checkpoint', help='model-N.pt or exported .safetensors to edit with (default: the shipped model)')
    g.add_argument('--conditional', action='store_true',
                   help='edit with the shipped class-conditional model (unconditioned unless --digits is given)')
    add_setting(g, 'digits', rule=EDIT_DIGITS, nargs='+', type=int, default=None,
                help='on a class-conditional model, the digit to condition on: one for all inputs, or one per '
                     'input (interpolate: one) (default: unconditioned, the model\'s null label)')
    add_setting(g, 'milestone', help='model-N.pt of --results_folder')
    add_setting(g, 'results_folder', help='training results folder for --milestone, and where the edits go '
                                          '(default: ./runs for the shipped model, ./results_mnist_ddpm otherwise)')
    g.add_argument('--device', default='auto', help='auto (CUDA, then MPS, then CPU), cuda, mps or cpu')
    g.add_argument('--precision', choices=['auto', 'fp32', 'bf16', 'fp16'], default='auto',
                   help='precision of the Unet (default: bf16 on CPUs with native bf16, else fp32)')
    add_setting(g, 'seed', default=0, help='seed of every noise draw, so a run repeats (default: 0)')
    add_setting(g, 'batch_size', default=100, help='images per forward pass (default: %(default)s)')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='operation', required=True, metavar='{inpaint,sdedit,invert,interpolate}')

    inpaint = sub.add_parser('inpaint', help='fill a masked region (RePaint, Lugmayr et al. 2022)')
    inpaint.add_argument('--input', nargs='+', required=True, help='input image files (PNG or any PIL format)')
    inpaint.add_argument('--mask', required=True,
                         help=f'region to regenerate: {", ".join(MASK_NAMES)}, or MASK.png of the inputs\' size '
                              '(white: generate, black: keep)')
    add_setting(inpaint, 'steps', rule=STEPS, type=int, default=None,
                help='DDIM steps for the fast variant (default: none, RePaint on the full DDPM chain)')
    add_setting(inpaint, 'eta', rule=ETA, type=float, default=None,
                help='DDIM eta of each step (default: 1, the DDPM posterior, on the full chain; 0 with --steps)')
    add_setting(inpaint, 'jump_length', rule=at_least(1), type=int, default=10,
                help='levels re-noised per resampling jump (paper default: %(default)s)')
    add_setting(inpaint, 'resamples', rule=at_least(1), type=int, default=10,
                help='times each jump is done, 1 = plain replacement without resampling (paper default: '
                     '%(default)s)')

    sdedit = sub.add_parser('sdedit', help='noise the inputs part of the way and denoise them (Meng et al. 2022)')
    sdedit.add_argument('--input', nargs='+', required=True, help='input image files')
    add_setting(sdedit, 'strength', rule=STRENGTH, type=float, required=True,
                help='fraction of the chain to noise to, in (0, 1]: small keeps the input, 1 ignores it')
    add_setting(sdedit, 'strategy', default='ddim',
                help='sampler of the registry that denoises (default: %(default)s)')
    add_setting(sdedit, 'steps', rule=STEPS, type=int, default=50,
                help='sampler steps over the whole chain; about strength x steps are run (default: %(default)s)')
    add_setting(sdedit, 'eta', rule=ETA, type=float, default=0.0, help='DDIM eta (DDIM only; default: %(default)s)')

    invert = sub.add_parser('invert', help='DDIM inversion (eta 0) to x_T and back; prints the round-trip error')
    invert.add_argument('--input', nargs='+', required=True, help='input image files')
    add_setting(invert, 'steps', rule=STEPS, type=int, default=50,
                help='DDIM steps K, both ways (default: %(default)s)')

    interp = sub.add_parser('interpolate', help='spherical interpolation between two x_T, generated by DDIM')
    source = interp.add_mutually_exclusive_group(required=True)
    source.add_argument('--input', nargs=2, metavar=('A.png', 'B.png'), help='two images, through their inversions')
    source.add_argument('--seeds', nargs=2, type=int, metavar=('A', 'B'), help='two seeds of x_T')
    add_setting(interp, 'frames', rule=at_least(2), type=int, default=8,
                help='images along the path, >= 2 (default: %(default)s)')
    add_setting(interp, 'steps', rule=STEPS, type=int, default=50, help='DDIM steps (default: %(default)s)')
    interp.add_argument('--gif', action='store_true', help='also write the frames as an animated GIF')

    for parser in (inpaint, sdedit, invert, interp):
        add_model_flags(parser)
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.cli.edit import run_edit
    values = {k: v for k, v in vars(args).items() if v is not None or k in ('steps', 'eta')}
    run_edit(**values)


if __name__ == '__main__':
    run_cli(main)
