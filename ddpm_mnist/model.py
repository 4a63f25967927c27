"""Building the library's Unet and GaussianDiffusion from a config, and comparing configs."""
import platform
from importlib.metadata import version

import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import (
    LinearAttention, cosine_beta_schedule, linear_beta_schedule, sigmoid_beta_schedule)
from torch import nn

from .settings import DIFFUSION_KEYS, MODEL_KEYS

SCHEDULE_FUNCTIONS = {'cosine': cosine_beta_schedule, 'linear': linear_beta_schedule,
                      'sigmoid': sigmoid_beta_schedule}


class NoAttention(nn.Module):
    """Stands where the library's Unet adds a residual attention layer (`x = attn(x) + x`): adds nothing."""

    def forward(self, x):
        return x.new_zeros(())


class LowestAttentionUnet(Unet):
    """The library's Unet with attention only at the lowest resolution (its full attention there and in the middle
    block); the linear attention of the outer levels, about half of an eager CPU step on MNIST, is left out. Same
    state-dict keys as the library's Unet, less those layers' weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for level in (*self.downs, *self.ups):
            if isinstance(level[2], LinearAttention):
                level[2] = NoAttention()


UNET_CLASSES = {'library': Unet, 'lowest': LowestAttentionUnet}


def attention_of(model_cfg):
    return model_cfg.get('attention', 'library')  # configs written before the lever existed: the library's layout


def build_unet(model_cfg):
    unet_class = UNET_CLASSES[attention_of(model_cfg)]
    return unet_class(dim=model_cfg['dim'], dim_mults=tuple(model_cfg['dim_mults']), channels=model_cfg['channels'])


def build_diffusion(config, unet=None, sampling_timesteps=None):
    d = config['diffusion']
    gamma = d.get('min_snr_gamma')
    return GaussianDiffusion(unet or build_unet(config['model']), image_size=d['image_size'],
                             timesteps=d['timesteps'], beta_schedule=d['beta_schedule'], objective=d['objective'],
                             sampling_timesteps=sampling_timesteps, min_snr_loss_weight=gamma is not None,
                             min_snr_gamma=gamma if gamma is not None else 5)


def arch_of(config):
    """The settings that must agree for weights to be reused, as one flat dict."""
    model = {**config['model'], 'attention': attention_of(config['model'])}
    return {**{k: model[k] for k in MODEL_KEYS}, **{k: config['diffusion'][k] for k in DIFFUSION_KEYS}}


def arch_differences(a, b):
    """Human-readable list of settings where two configs disagree."""
    arch_a, arch_b = arch_of(a), arch_of(b)
    return [f'{k}: {arch_a[k]} vs {arch_b[k]}' for k in arch_a if list_if_seq(arch_a[k]) != list_if_seq(arch_b[k])]


def list_if_seq(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def versions():
    packages = ('torchvision', 'denoising_diffusion_pytorch', 'accelerate', 'ema_pytorch')
    return dict(python=platform.python_version(), torch=str(torch.__version__),
                **{name: version(name.replace('_', '-')) for name in packages})
