"""Model, diffusion and training settings: the presets and the flags that name them. Imports no torch, so
`--help` and flag errors are instant."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

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
    g.add_argument('--channels', type=int, help='image channels (MNIST: 1)')
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
