"""Building the library's Unet and GaussianDiffusion from a config, and comparing configs; the library's attention
layers laid out for channels_last inputs (the speed lever training and sampling swap in)."""
from __future__ import annotations

import platform
from importlib.metadata import version
from typing import Any

import torch
import torch.nn.functional as F
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import (Attention, LinearAttention, cosine_beta_schedule,
                                                                     linear_beta_schedule, sigmoid_beta_schedule)
from torch import nn

from ddpm_mnist.model.conditional import GuidedUnet, LabelledDiffusion, build_conditional_unet, is_conditional
from ddpm_mnist.model.losses import set_loss_weight, training_diffusion
from ddpm_mnist.utils import Config, UserError
from ddpm_mnist.settings import DIFFUSION_KEYS, MODEL_KEYS

SCHEDULE_FUNCTIONS = {'cosine': cosine_beta_schedule, 'linear': linear_beta_schedule,
                      'sigmoid': sigmoid_beta_schedule}


class NoAttention(nn.Module):
    """Stands where the library's Unet adds a residual attention layer (`x = attn(x) + x`): adds nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())


class LowestAttentionUnet(Unet):
    """The library's Unet with attention only at the lowest resolution (its full attention there and in the middle
    block); the linear attention of the outer levels, about half of an eager CPU step on MNIST, is left out. Same
    state-dict keys as the library's Unet, less those layers' weights."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for level in (*self.downs, *self.ups):
            if isinstance(level[2], LinearAttention):
                level[2] = NoAttention()


UNET_CLASSES = {'library': Unet, 'lowest': LowestAttentionUnet}


# --init_from may add attention (a 'lowest' parent's weights load into a 'library' Unet) or self-conditioning: grow()
GROWABLE = {'attention': ('lowest', 'library'), 'self_condition': (False, True)}  # setting: (the parent's, the run's)
# The output gain a grown attention layer starts with (the library's: 1). At 0 the grown Unet would be exactly its
# parent, but the layer's other weights get no gradient while the gain is 0 and the layer stays unused (a
# 5,600-step fine-tune moved such gains to 0.002 at most); at 0.1 it starts as a small perturbation of the parent.
GROWN_GAIN = 0.1


def grow_attention(unet: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load the weights of a Unet with attention at the lowest level only into one with the library's linear
    attention at every level. The new layers keep the library's initialisation but start with their output
    norm's gain at GROWN_GAIN, so the grown Unet starts close to the parent's function and trains the new layers
    from the first step. Returns the new layers' names; weights that are not that parent's are a ValueError."""
    missing, unexpected = unet.load_state_dict(state, strict=False)
    added = [name for name, module in unet.named_modules() if isinstance(module, LinearAttention)]
    stray = [key for key in missing if not any(key.startswith(name + '.') for name in added)]
    if unexpected or stray or not missing:
        raise ValueError(f'not a lowest-attention parent of this Unet: {(unexpected + stray)[:3] or "nothing new"}')
    for name in added:
        nn.init.constant_(unet.get_submodule(name).to_out[1].g, GROWN_GAIN)
    return added


def grow_self_condition(unet: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A parent's state dict for the same Unet with self-conditioning: the library concatenates (x0 estimate, x_t)
    along the channels, so the input convolution gets the estimate's input weights in front, at zero: the grown Unet
    is exactly its parent until training moves them (their gradient is not zero, unlike a zero attention gain's)."""
    weight = state['init_conv.weight']
    wanted = unet.init_conv.weight.shape[1]
    if weight.shape[1] * 2 != wanted:
        raise ValueError(f'init_conv takes {weight.shape[1]} channels, this Unet {wanted}')
    return {**state, 'init_conv.weight': torch.cat([torch.zeros_like(weight), weight], dim=1)}


def grow(unet: nn.Module, state: dict[str, torch.Tensor], grown: list[str]) -> None:
    """Load a parent's weights into a Unet that adds what `grown` names (read_parent's record: 'attention: ...',
    'self_condition: ...'), or strictly when it adds nothing."""
    if any(item.startswith('self_condition') for item in grown):
        state = grow_self_condition(unet, state)
    if any(item.startswith('attention') for item in grown):
        grow_attention(unet, state)
    else:
        unet.load_state_dict(state)


def attention_of(model_cfg: dict[str, Any]) -> str:
    """The attention layout of a model section: 'library' (every level) or 'lowest'."""
    return model_cfg.get('attention', 'library')  # configs written before the lever existed: the library's layout


def build_unet(model_cfg: dict[str, Any]) -> nn.Module:
    """The Unet a config's model section describes: the library's, its lowest-attention subclass or a conditional
    one."""
    if is_conditional(model_cfg):
        if model_cfg.get('self_condition'):
            raise UserError('--self_condition on is for unconditional models: the library\'s class-conditional Unet '
                            'has no self-conditioning input')
        return build_conditional_unet(model_cfg)
    unet_class = UNET_CLASSES[attention_of(model_cfg)]
    return unet_class(dim=model_cfg['dim'], dim_mults=tuple(model_cfg['dim_mults']), channels=model_cfg['channels'],
                      self_condition=bool(model_cfg.get('self_condition')))


def diffusion_settings(config: Config, sampling_timesteps: int | None = None) -> dict[str, Any]:
    """The keyword arguments of the library's GaussianDiffusion for a config."""
    d = config['diffusion']
    gamma = d.get('min_snr_gamma')
    return dict(image_size=d['image_size'], timesteps=d['timesteps'], beta_schedule=d['beta_schedule'],
                objective=d['objective'], sampling_timesteps=sampling_timesteps, min_snr_loss_weight=gamma is not None,
                min_snr_gamma=gamma if gamma is not None else 5)


def build_diffusion(config: Config, unet: nn.Module | None = None, sampling_timesteps: int | None = None, *,
                    training: bool = False) -> GaussianDiffusion:
    """The library's GaussianDiffusion. A conditional model trains as the library's conditional diffusion
    (LabelledDiffusion) and samples through GuidedUnet inside the unconditional one, so every sampler works on it.
    Training adds the loss levers its config names (model.losses)."""
    unet = unet or build_unet(config['model'])
    if is_conditional(config['model']):
        if training:
            labelled = training_diffusion(LabelledDiffusion, config['diffusion'], unet,
                                          **diffusion_settings(config, sampling_timesteps))
            labelled.settings = diffusion_settings(config)
            return labelled
        unet = GuidedUnet(unet)
    if training:
        diffusion = training_diffusion(GaussianDiffusion, config['diffusion'], unet,
                                       **diffusion_settings(config, sampling_timesteps))
    else:
        diffusion = GaussianDiffusion(unet, **diffusion_settings(config, sampling_timesteps))
        set_loss_weight(diffusion, config['diffusion'])
    diffusion.student = config.get('student')  # a distilled student: how the consistency sampler reads it
    return diffusion


def sampling_view(labelled: LabelledDiffusion) -> GaussianDiffusion:
    """A LabelledDiffusion (training) as the sampling diffusion of the same Unet (shared, not copied)."""
    return GaussianDiffusion(GuidedUnet(labelled.model), **labelled.settings).to(labelled.betas.device)


def arch_of(config: Config) -> dict[str, Any]:
    """The settings that must agree for weights to be reused, as one flat dict."""
    model = {**config['model'], 'attention': attention_of(config['model']),
             'num_classes': config['model'].get('num_classes'),
             'self_condition': bool(config['model'].get('self_condition'))}
    return {**{k: model[k] for k in MODEL_KEYS}, **{k: config['diffusion'][k] for k in DIFFUSION_KEYS}}


def arch_differences(a: Config, b: Config) -> list[str]:
    """Human-readable list of settings where two configs disagree."""
    arch_a, arch_b = arch_of(a), arch_of(b)
    return [f'{k}: {arch_a[k]} vs {arch_b[k]}' for k in arch_a if list_if_seq(arch_a[k]) != list_if_seq(arch_b[k])]


def list_if_seq(value: Any) -> Any:
    """Tuples as lists, so that (1, 2, 2) from code and [1, 2, 2] from JSON compare equal."""
    return list(value) if isinstance(value, (list, tuple)) else value


def versions() -> dict[str, str]:
    """Python's and the libraries' versions, for provenance."""
    packages = ('torchvision', 'denoising_diffusion_pytorch', 'accelerate', 'ema_pytorch')
    return dict(python=platform.python_version(), torch=str(torch.__version__),
                **{name: version(name.replace('_', '-')) for name in packages})


# ---------------------------------------------------------------- attention laid out for channels_last
# The library's two attention layers with the same maths, laid out for channels_last inputs.
#
# The library rearranges q, k, v to (batch, heads, dim, pixels), which for a channels_last activation is a
# full copy of each, then lets einsum copy them again. Here the 1x1-conv output, (batch, pixels, 3 * heads *
# dim) in memory, is split by views; the per-head products take those views as strided matrices (fp32 BLAS
# reads them in place; the bf16 kernels still copy them), full attention uses PyTorch's fused
# scaled_dot_product_attention, and the result comes back already channels_last.
# Same parameters, same state dict. Inference swaps both in (sampling.loop.prepare_for_inference); training only
# the linear one (training.step's fast_linear_attention lever; see use_fast_attention).

def split_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, 3*c, x, y) -> q, k, v as (b, x*y, c) views (no copy when qkv is channels_last)."""
    b, c3, x, y = qkv.shape
    return qkv.permute(0, 2, 3, 1).reshape(b, x * y, 3, c3 // 3).unbind(dim=2)


def to_image(out: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """(b, x*y, c) -> (b, c, x, y), channels_last."""
    return out.reshape(out.shape[0], x, y, -1).permute(0, 3, 1, 2)


def with_memory(mem: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Prepend the learned memory (m, c) to t (b, n, c) along the pixel axis."""
    return torch.cat((mem.to(t.dtype).expand(t.shape[0], -1, -1), t), dim=1)


class FastLinearAttention(LinearAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = split_qkv(self.to_qkv(self.norm(x)))
        mk, mv = (m.flatten(0, 1).t() for m in self.mem_kv)  # (heads, dim, m) -> (m, heads * dim)
        k, v = with_memory(mk, k), with_memory(mv, v)
        q = q.unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(2) * self.scale
        heads = zip(*(t.chunk(self.heads, dim=-1) for t in (q, k.softmax(dim=1), v)))
        out = torch.cat([qh @ (kh.transpose(1, 2) @ vh) for qh, kh, vh in heads], dim=-1)
        return self.to_out(to_image(out, h, w))


class FastAttention(Attention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = split_qkv(self.to_qkv(self.norm(x)))
        mk, mv = (m.transpose(0, 1).flatten(1) for m in self.mem_kv)  # (heads, m, dim) -> (m, heads * dim)
        k, v = with_memory(mk, k), with_memory(mv, v)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(to_image(out.transpose(1, 2).flatten(2), h, w))


def use_fast_attention(unet: torch.nn.Module, *, full: bool = True) -> torch.nn.Module:
    """Swap every library attention layer in `unet` for its layout-aware twin, in place. full=False keeps the
    library's full attention, as training does: compiled, its einsum maths trains faster than the fused kernel,
    whose backward is slow on a CPU for MNIST's 64-pixel sequences (benchmarks/bench_training.py)."""
    for module in unet.modules():
        if type(module) is LinearAttention:
            module.__class__ = FastLinearAttention
        elif full and type(module) is Attention and not module.attend.flash and module.attend.dropout == 0:
            module.__class__ = FastAttention
    return unet
