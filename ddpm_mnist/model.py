"""Model and diffusion settings: presets, config.json, building the library's classes, and detection."""
import platform
from pathlib import Path

import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import (
    cosine_beta_schedule, linear_beta_schedule, sigmoid_beta_schedule)

from .utils import UserError, read_json, write_json

CONFIG_NAME = 'config.json'
OBJECTIVES = ('pred_v', 'pred_noise', 'pred_x0')
SCHEDULES = {'cosine': cosine_beta_schedule, 'linear': linear_beta_schedule, 'sigmoid': sigmoid_beta_schedule}

# Settings that fix what a checkpoint's weights mean; everything else may change between runs.
MODEL_KEYS = ('dim', 'dim_mults', 'channels')
DIFFUSION_KEYS = ('image_size', 'timesteps', 'beta_schedule', 'objective')

# The original project's values. Its objective was left at the library default, pred_v.
ORIGINAL = dict(
    model=dict(dim=64, dim_mults=[1, 2, 4, 8], channels=1),
    diffusion=dict(image_size=32, timesteps=1000, beta_schedule='cosine', objective='pred_v'),
)

PRESETS = {
    'seed': dict(
        **ORIGINAL,
        training=dict(train_batch_size=128, train_lr=1e-5, train_num_steps=100_000, gradient_accumulate_every=2,
                      ema_decay=0.995, ema_update_every=10, amp=True, save_and_sample_every=1000, num_samples=25,
                      sampling_timesteps=None, results_folder='./results_mnist_ddpm'),
    ),
    # Measured to reach recognisable digits in about an hour on a 2-core CPU (see README).
    'small': dict(
        model=dict(dim=32, dim_mults=[1, 2, 2], channels=1),
        diffusion=dict(image_size=32, timesteps=1000, beta_schedule='cosine', objective='pred_v'),
        training=dict(train_batch_size=64, train_lr=2e-4, train_num_steps=3000, gradient_accumulate_every=1,
                      ema_decay=0.998, ema_update_every=1, amp=True, save_and_sample_every=300, num_samples=25,
                      sampling_timesteps=50, results_folder='./results_mnist_small'),
    ),
}
# The shipped model (scripts/train_shipped.sh): the small Unet on all 60,000 digits, sized to about an hour on a
# 2-core CPU. At equal images seen, batch 64 with lr 3e-4 beat batch 128 with lr 2e-4 (docs/training.md).
PRESETS['shipped'] = dict(PRESETS['small'], training=dict(
    PRESETS['small']['training'], train_lr=3e-4, train_num_steps=3600, save_and_sample_every=600,
    results_folder='./runs/shipped60k'))


def add_model_args(parser):
    """Flags shared by training and inference; None means 'from the preset, config or checkpoint'."""
    g = parser.add_argument_group('model and diffusion (default: from the preset, config.json or checkpoint)')
    g.add_argument('--unet_dim', type=int, help='base channel width of the Unet (original: 64)')
    g.add_argument('--dim_mults', type=lambda s: [int(x) for x in s.split(',')],
                   help='comma-separated channel multipliers per Unet level (original: 1,2,4,8)')
    g.add_argument('--channels', type=int, help='image channels (MNIST: 1)')
    g.add_argument('--image_size', type=int, help='side of the square images the model works on (original: 32)')
    g.add_argument('--train_timesteps', type=int, help='diffusion steps T used in training (original: 1000)')
    g.add_argument('--beta_schedule', choices=sorted(SCHEDULES), help='noise schedule (original: cosine)')
    g.add_argument('--objective', choices=OBJECTIVES,
                   help='what the Unet predicts (original: pred_v, the library default it trained with)')


def model_overrides(args):
    """The model/diffusion settings the user gave explicitly, as {'model': ..., 'diffusion': ...}."""
    pairs = dict(model=dict(dim=args.unet_dim, dim_mults=args.dim_mults, channels=args.channels),
                 diffusion=dict(image_size=args.image_size, timesteps=args.train_timesteps,
                                beta_schedule=args.beta_schedule, objective=args.objective))
    return {section: {k: v for k, v in values.items() if v is not None} for section, values in pairs.items()}


def arch_of(config):
    """The settings that must agree for weights to be reused, as one flat dict."""
    return {**{k: config['model'][k] for k in MODEL_KEYS}, **{k: config['diffusion'][k] for k in DIFFUSION_KEYS}}


def arch_differences(a, b):
    """Human-readable list of settings where two configs disagree."""
    arch_a, arch_b = arch_of(a), arch_of(b)
    return [f'{k}: {arch_a[k]} vs {arch_b[k]}' for k in arch_a if list_if_seq(arch_a[k]) != list_if_seq(arch_b[k])]


def list_if_seq(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def build_unet(model_cfg):
    return Unet(dim=model_cfg['dim'], dim_mults=tuple(model_cfg['dim_mults']), channels=model_cfg['channels'])


def build_diffusion(config, unet=None, sampling_timesteps=None):
    d = config['diffusion']
    return GaussianDiffusion(unet or build_unet(config['model']), image_size=d['image_size'],
                             timesteps=d['timesteps'], beta_schedule=d['beta_schedule'], objective=d['objective'],
                             sampling_timesteps=sampling_timesteps)


def versions():
    from importlib.metadata import version
    packages = ('torchvision', 'denoising_diffusion_pytorch', 'accelerate', 'ema_pytorch')
    return dict(python=platform.python_version(), torch=str(torch.__version__),
                **{name: version(name.replace('_', '-')) for name in packages})


def config_path(folder):
    return Path(folder) / CONFIG_NAME


def read_config(folder):
    path = config_path(folder)
    if not path.is_file():
        return None
    config = read_json(path)
    if not all(section in config for section in ('model', 'diffusion')):
        raise UserError(f'{path} has no model/diffusion settings; it was not written by train_ddpm_mnist.py')
    return config


def write_config(folder, config):
    write_json(config_path(folder), config)


# ---------------------------------------------------------------- detection from weights

def infer_unet_arch(unet_state):
    """Unet dim, dim_mults and channels from the shapes of a Unet state dict."""
    try:
        dim, channels = unet_state['init_conv.weight'].shape[:2]
        levels = sorted({int(k.split('.')[1]) for k in unet_state if k.startswith('downs.')})
        mults = []
        for level in levels:
            out = unet_state.get(f'downs.{level}.3.1.weight', unet_state.get(f'downs.{level}.3.weight'))
            mults.append(int(out.shape[0]) // int(dim))
    except (KeyError, AttributeError, IndexError) as err:
        raise UserError(f'the weights are not a denoising-diffusion-pytorch Unet (missing {err})') from None
    return dict(dim=int(dim), dim_mults=mults, channels=int(channels))


def detect_schedule(betas):
    """Name of the library beta schedule that produced `betas`, or None."""
    betas = betas.double().cpu()
    for name, fn in SCHEDULES.items():
        if torch.allclose(fn(len(betas)).double(), betas, rtol=1e-4, atol=1e-6):
            return name
    return None


def detect_objective(loss_weight, alphas_cumprod):
    """Objective from the library's loss_weight buffer: 1 for pred_noise, snr for pred_x0, snr/(snr+1) for pred_v."""
    ac = alphas_cumprod.double().cpu()
    snr = ac / (1 - ac)
    for gamma in (None, 5.0):  # plain, or min-SNR weighting with the library's default gamma
        clipped = snr if gamma is None else snr.clamp(max=gamma)
        candidates = dict(pred_noise=clipped / snr, pred_x0=clipped, pred_v=clipped / (snr + 1))
        for name, weight in candidates.items():
            if torch.allclose(weight, loss_weight.double().cpu(), rtol=1e-3, atol=1e-6):
                return name
    return None
