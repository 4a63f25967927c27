"""Model, diffusion, training and sampling settings: the presets, the flags that name them and the rule each flag's
value obeys (checked right after parsing, before torch is imported or anything is written, so a bad value is one
line naming the flag, the value and what is allowed). Imports no torch, so `--help` and flag errors are instant."""
from __future__ import annotations

import argparse
import copy
import math
from collections import namedtuple
from pathlib import Path
from typing import Any, Sequence

from ddpm_mnist.sampling.registry import SAMPLERS
from ddpm_mnist.utils import BadValue, UserError

SHIPPED = Path(__file__).resolve().parent / 'pretrained' / 'ddpm_mnist_small.safetensors'  # installed with the package
SHIPPED_CONDITIONAL = SHIPPED.with_name('ddpm_mnist_conditional.safetensors')

OBJECTIVES = ('pred_v', 'pred_noise', 'pred_x0')
SCHEDULES = ('cosine', 'linear', 'sigmoid')

# Settings that fix what a checkpoint's weights mean; everything else may change between runs.
MODEL_KEYS = ('dim', 'dim_mults', 'channels', 'attention', 'num_classes')  # num_classes: None unconditional
ATTENTION_LAYOUTS = ('library', 'lowest')
DIFFUSION_KEYS = ('image_size', 'timesteps', 'beta_schedule', 'objective')

# The original project's values. Its objective was left at the library default, pred_v.
ORIGINAL = dict(
    model=dict(dim=64, dim_mults=[1, 2, 4, 8], channels=1),
    diffusion=dict(image_size=32, timesteps=1000, beta_schedule='cosine', objective='pred_v'),
)

PRESETS = {
    'seed': dict(
        **copy.deepcopy(ORIGINAL),
        training=dict(train_batch_size=128, train_lr=1e-5, train_num_steps=100_000, gradient_accumulate_every=2,
                      ema_decay=0.995, ema_update_every=10, amp=True, save_and_sample_every=1000, num_samples=25,
                      sampling_timesteps=None, results_folder='./results_mnist_ddpm'),
    ),
    # Sized to reach recognisable digits on a 2-core CPU in a session (docs/training.md).
    'small': dict(
        model=dict(dim=32, dim_mults=[1, 2, 2], channels=1),
        diffusion=dict(image_size=32, timesteps=1000, beta_schedule='cosine', objective='pred_v'),
        training=dict(train_batch_size=64, train_lr=2e-4, train_num_steps=3000, gradient_accumulate_every=1,
                      ema_decay=0.998, ema_update_every=1, amp=True, save_and_sample_every=300, num_samples=25,
                      sampling_timesteps=50, results_folder='./results_mnist_small'),
    ),
}
# The shipped model (scripts/train_shipped.sh), the recipe study's winner at equal wall time (docs/training.md):
PRESETS['shipped'] = dict(
    model=dict(PRESETS['small']['model'],
               attention='lowest'),            # full attention at 7x7 only: half the step of the library's layout
    diffusion=dict(PRESETS['small']['diffusion'],
                   image_size=28,               # MNIST's own size (32 px resizes it: 31 % more pixels)
                   min_snr_gamma=5),            # min-SNR-5 loss weighting (Hang et al. 2023): best of stage two
    training=dict(PRESETS['small']['training'],
                  train_batch_size=32,          # more updates per minute beat larger batches at equal wall time
                  train_lr=2.1e-4,              # 3e-4 at batch 64, scaled by sqrt(32 / 64)
                  train_num_steps=58_000,       # the first milestone past 1,800,000 images (30 epochs)
                  save_and_sample_every=2000,   # a milestone (and a resume point) every 64,000 images
                  results_folder='./runs/shipped'))

# Command-line flag -> (config section, key): the one map between flags and config.json.
MODEL_FLAGS = {
    'unet_dim': ('model', 'dim'), 'dim_mults': ('model', 'dim_mults'), 'channels': ('model', 'channels'),
    'image_size': ('diffusion', 'image_size'), 'train_timesteps': ('diffusion', 'timesteps'),
    'beta_schedule': ('diffusion', 'beta_schedule'), 'objective': ('diffusion', 'objective'),
    'attention': ('model', 'attention'),
}
FLAG_OF = {key: flag for flag, (_, key) in MODEL_FLAGS.items()}


def comma_ints(text: str) -> list[int]:
    """'1,2,2' -> [1, 2, 2] (an argparse type)."""
    return [int(x) for x in text.split(',')]


def comma_floats(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0] (an argparse type)."""
    return [float(x) for x in text.split(',')]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by training and inference; None means 'from the preset, config or checkpoint'."""
    g = parser.add_argument_group('model and diffusion (default: from the preset, config.json or checkpoint)')
    g.add_argument('--unet_dim', type=int, help='base channel width of the Unet (original: 64)')
    g.add_argument('--dim_mults', type=comma_ints,
                   help='comma-separated channel multipliers per Unet level (original: 1,2,4,8)')
    g.add_argument('--channels', type=int, help="image channels (default: the data folder's dataset; MNIST: 1)")
    g.add_argument('--image_size', type=int, help='side of the square images the model works on (original: 32)')
    g.add_argument('--train_timesteps', type=int, help='diffusion steps T used in training (original: 1000)')
    g.add_argument('--beta_schedule', choices=SCHEDULES, help='noise schedule (original: cosine)')
    g.add_argument('--attention', choices=ATTENTION_LAYOUTS,
                   help="where the Unet attends: library (linear attention at every level, full attention at the "
                        "lowest; the original) or lowest (only the lowest level's full attention and the middle "
                        "block's)")
    g.add_argument('--objective', choices=OBJECTIVES,
                   help='what the Unet predicts (original: pred_v, the library default it trained with)')


def model_overrides(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model/diffusion settings given explicitly in `values` (flag name -> value, None for not given), as
    {'model': {...}, 'diffusion': {...}}."""
    overrides = {'model': {}, 'diffusion': {}}
    for flag, (section, key) in MODEL_FLAGS.items():
        if values.get(flag) is not None:
            overrides[section][key] = values[flag]
    return overrides


def add_raw_dir_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--raw_dir (alias --raw-dir): a folder of MNIST IDX files, for offline use."""
    parser.add_argument('--raw_dir', '--raw-dir', dest='raw_dir', help=help_text)


def add_dataset_arg(parser: argparse.ArgumentParser) -> None:
    """--dataset: which entry of datasets.DATASETS (default mnist)."""
    from ddpm_mnist.datasets import DATASETS
    parser.add_argument('--dataset', choices=list(DATASETS), default='mnist',
                        help='mnist, fashion_mnist (the same IDX format), cifar10 (its binary archive) or folder (any '
                             'folder of images, one subfolder per class for labels; needs --raw_dir) '
                             '(default: %(default)s)')


def add_data_root_arg(parser: argparse.ArgumentParser) -> None:
    """--data_root (alias --root): where torchvision downloads and caches MNIST."""
    parser.add_argument('--data_root', '--root', dest='data_root', default='./data',
                        help='folder where torchvision downloads and caches MNIST (default: %(default)s)')


RAW_DIR_HELP = 'MNIST IDX folder (offline), e.g. ../shared/data/mnist-full; default: torchvision download'


def add_mnist_args(parser: argparse.ArgumentParser, raw_dir_help: str = RAW_DIR_HELP) -> None:
    """--raw_dir and --data_root: where a script finds MNIST (offline IDX files, or torchvision's cache)."""
    add_raw_dir_arg(parser, raw_dir_help)
    add_data_root_arg(parser)


# Training flags that map one-to-one onto config['training'] (type, help).
TRAINING_FLAGS = {
    'train_batch_size': (int, 'images per process per step'),
    'train_lr': (float, 'Adam learning rate'),
    'train_num_steps': (int, 'total optimiser steps (training stops there; resuming continues up to it)'),
    'gradient_accumulate_every': (int, 'batches accumulated per optimiser step'),
    'ema_decay': (float, 'EMA decay of the weights used for sampling'),
    'ema_update_every': (int, 'update the EMA every this many steps'),
    'save_and_sample_every': (int, 'steps between milestones (model-N.pt and sample-N.png)'),
    'num_samples': (int, 'images in each sample-N.png (a square number)'),
    'sampling_timesteps': (int, 'DDIM steps for the sample-N.png grids (default: T, i.e. DDPM as the original)'),
    'results_folder': (str, 'where config.json, model-N.pt and sample-N.png go'),
    'lr_warmup_steps': (int, 'optimiser steps of linear learning-rate warm-up from 0 (default: 0, none)'),
    'post_hoc_ema_every': (int, "also keep ema-pytorch's PostHocEMA (sigma_rel 0.05 and 0.28), a snapshot every this "
                                'many steps in RESULTS/post_hoc_ema/, so the EMA length can be chosen after training '
                                'with scripts/post_hoc_ema.py (default: off)'),
    'lr_schedule': (str, 'constant, or cosine: decay to 0 at --train_num_steps after the warm-up '
                         '(default: constant, as the library)'),
}
LR_SCHEDULES = ('constant', 'cosine')


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: a bad or unknown flag prints one line and a pointer to --help,
    not the whole usage (exit status 2, as argparse's own). Every command also takes --quiet, applied here and
    not passed on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument('--quiet', action='store_true', default=argparse.SUPPRESS,
                          help='no progress bars (results, warnings and errors still print)')

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        from ddpm_mnist.progress import set_quiet
        set_quiet(False)  # each command line decides afresh (a sub-command's parser runs inside its parent's)
        parsed, rest = super().parse_known_args(args, namespace)
        if parsed.__dict__.pop('quiet', False):
            set_quiet(True)
        return parsed, rest

    def error(self, message: str) -> None:
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


# ---------------------------------------------------------------- the rules every flag obeys

Rule = namedtuple('Rule', 'ok allowed')
MAX_SEED = 2 ** 32 - 1


def at_least(low: int) -> Rule:
    """An integer >= low."""
    return Rule(lambda v: is_integer(v) and v >= low, f'an integer >= {low}')


def is_integer(value: Any) -> bool:
    """An int, not a bool or a float (the API gets what a caller passes; the CLI's argparse has converted it)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fraction(*, closed_top: bool) -> Rule:
    """A number in [0, 1] (closed_top) or [0, 1)."""
    top = ']' if closed_top else ')'
    return Rule(lambda v: is_number(v) and 0 <= v and (v <= 1 if closed_top else v < 1), f'a number in [0, 1{top}')


def each(rule: Rule) -> Rule:
    """A list whose every element obeys `rule`."""
    return Rule(lambda values: isinstance(values, (list, tuple)) and all(rule.ok(v) for v in values),
                f'a comma-separated list of {rule.allowed}s')


POSITIVE_NUMBER = Rule(lambda v: is_number(v) and v > 0, 'a finite number > 0')
SQUARE = Rule(lambda v: is_integer(v) and v >= 1 and math.isqrt(v) ** 2 == v,
              'a square number >= 1 (the sample grid is square)')
DIGITS = Rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(is_integer(d) and 0 <= d <= 9 for d in v)
              and len(set(v)) == len(v), 'distinct digits 0-9, at least one (e.g. [7] or [0, 3, 9])')

RULES = {
    # model and diffusion
    'unet_dim': at_least(1), 'dim_mults': each(at_least(1)), 'train_timesteps': at_least(1),
    'channels': Rule(lambda v: v in (1, 3), '1 (greyscale, as MNIST) or 3 (colour, as CIFAR-10)'),
    'image_size': at_least(8),
    # training
    'train_batch_size': at_least(1), 'train_lr': POSITIVE_NUMBER, 'train_num_steps': at_least(1),
    'gradient_accumulate_every': at_least(1), 'ema_decay': fraction(closed_top=False),
    'ema_update_every': at_least(1), 'save_and_sample_every': at_least(1), 'num_samples': at_least(1),
    'sampling_timesteps': at_least(1), 'lr_warmup_steps': at_least(0), 'cond_drop_prob': fraction(closed_top=False),
    'post_hoc_ema_every': at_least(1), 'max_minutes': POSITIVE_NUMBER, 'min_snr_gamma': POSITIVE_NUMBER,
    'snr_floor': POSITIVE_NUMBER, 'input_perturbation': POSITIVE_NUMBER,
    'lr_schedule': Rule(lambda v: v in LR_SCHEDULES, ' or '.join(LR_SCHEDULES)), 'num_fid_samples': at_least(2),
    'num_workers': at_least(0),
    'seed': Rule(lambda v: is_integer(v) and 0 <= v <= MAX_SEED, f'an integer from 0 to {MAX_SEED}'),
    # sampling
    'milestone': at_least(1), 'sample_steps': at_least(1), 'batch_size': at_least(1),
    'ddim_eta': fraction(closed_top=True),  # eta > 1 adds more noise than DDPM's posterior: not a DDIM sampler
    'compare_steps': each(at_least(1)), 'compare_etas': each(fraction(closed_top=True)),
    'compare_solver_steps': each(at_least(1)), 'guidance_scale': Rule(lambda v: is_number(v) and 0 <= v <= 100,
                                                                      'a finite number from 0 to 100 (1: unguided)'),
    'strategy': Rule(lambda v: v in SAMPLERS, f'one of {", ".join(SAMPLERS)}'),
    'guidance_rescaled_phi': fraction(closed_top=True),
    'compare_samplers': Rule(lambda names: all(n in SAMPLERS for n in names),
                             f'a comma-separated list from {",".join(SAMPLERS)}'),
}


def parse_digits(text: str) -> list[int]:
    """--digits '7' or '0,3,9' -> [7] or [0, 3, 9] (distinct digits 0-9); a one-line error for anything else."""
    try:
        digits = [int(part) for part in text.split(',')]
    except ValueError:
        digits = None
    if not DIGITS.ok(digits):
        raise BadValue(f'--digits {text} is not allowed: use distinct digits 0-9, comma-separated (e.g. 7 or 0,3,9)')
    return digits


def check_flags(values: dict[str, Any], rules: dict[str, Rule] = RULES, extra: dict[str, Rule] | None = None) -> None:
    """Raise a one-line BadValue for the first flag in `values` (flag name -> value) that breaks its rule."""
    rules = {**rules, **(extra or {})}
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None and value is not None and not rule.ok(value):
            shown = ','.join(map(str, value)) if isinstance(value, list) else value
            raise BadValue(f'--{name} {shown} is not allowed: use {rule.allowed}')


def check_arguments(values: dict[str, Any], rule_of: dict[str, str]) -> None:
    """The API's front end to the same rules: `values` are a function's arguments, `rule_of` names the flag whose
    rule each obeys; the first that breaks it is a BadValue (also a ValueError) naming the argument."""
    rules = {**RULES, 'digits': DIGITS}  # the CLI parses --digits itself (parse_digits), by the same DIGITS rule
    for name, value in values.items():
        rule = rules[rule_of.get(name, name)]
        if value is not None and not rule.ok(value):
            raise BadValue(f'{name}={value!r} is not allowed: use {rule.allowed}')


def check_relations(*, image_size: int, dim_mults: Sequence[int], timesteps: int,
                    sampling_timesteps: int | None = None) -> None:
    """Rules between settings: the Unet halves the image once per level but the last; S <= T."""
    halvings = 2 ** (len(dim_mults) - 1)
    if image_size % halvings:
        raise UserError(f'--image_size {image_size} does not fit a Unet with {len(dim_mults)} levels: use a multiple '
                        f'of {halvings}')
    if sampling_timesteps is not None and sampling_timesteps > timesteps:
        raise UserError(f'--sampling_timesteps {sampling_timesteps} is more than the training timesteps T = '
                        f'{timesteps}: use 1 to {timesteps}')
