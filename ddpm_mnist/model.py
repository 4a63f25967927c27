"""Building the library's Unet and GaussianDiffusion from a config, and comparing configs."""
import platform

import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import (
    cosine_beta_schedule, linear_beta_schedule, sigmoid_beta_schedule)

from .settings import DIFFUSION_KEYS, MODEL_KEYS

SCHEDULE_FUNCTIONS = {'cosine': cosine_beta_schedule, 'linear': linear_beta_schedule,
                      'sigmoid': sigmoid_beta_schedule}


def build_unet(model_cfg):
    return Unet(dim=model_cfg['dim'], dim_mults=tuple(model_cfg['dim_mults']), channels=model_cfg['channels'])


def build_diffusion(config, unet=None, sampling_timesteps=None):
    d = config['diffusion']
    return GaussianDiffusion(unet or build_unet(config['model']), image_size=d['image_size'],
                             timesteps=d['timesteps'], beta_schedule=d['beta_schedule'], objective=d['objective'],
                             sampling_timesteps=sampling_timesteps)


def arch_of(config):
    """The settings that must agree for weights to be reused, as one flat dict."""
    return {**{k: config['model'][k] for k in MODEL_KEYS}, **{k: config['diffusion'][k] for k in DIFFUSION_KEYS}}


def arch_differences(a, b):
    """Human-readable list of settings where two configs disagree."""
    arch_a, arch_b = arch_of(a), arch_of(b)
    return [f'{k}: {arch_a[k]} vs {arch_b[k]}' for k in arch_a if list_if_seq(arch_a[k]) != list_if_seq(arch_b[k])]


def list_if_seq(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def versions():
    from importlib.metadata import version
    packages = ('torchvision', 'denoising_diffusion_pytorch', 'accelerate', 'ema_pytorch')
    return dict(python=platform.python_version(), torch=str(torch.__version__),
                **{name: version(name.replace('_', '-')) for name in packages})
