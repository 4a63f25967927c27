"""Sampling a library GaussianDiffusion with any sampler of registry.SAMPLERS: device and precision set up
in one place, paired seeds and honest timing.

The library's own loops draw their noise from the global RNG, so DDPM and DDIM would start from
different x_T whenever more than one batch is sampled, and it silently runs DDPM when asked for
DDIM with S = T. Here every sampler starts image i from the same x_T (from --seed), draws its per-step
noise from a seeded generator, and runs on the library's own model predictions.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from ddpm_mnist.model.network import use_fast_attention
from ddpm_mnist.model.conditional import UNGUIDED, Guidance, GuidedUnet, balanced_labels
from ddpm_mnist.runtime import cpu_has_bf16, progress, synchronize
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.sampling.samplers import build_sampler
from ddpm_mnist.utils import Diffusion, UserError


def default_batch_size(device: torch.device, num_samples: int) -> int:
    """Images per forward when --batch_size is not given: 100 on a CPU, 500 on a GPU (benchmarks/bench_sampling.py
    compares batch sizes; docs/speed.md)."""
    return min(num_samples, 100 if device.type == 'cpu' else 500)


def default_precision(device: torch.device) -> str:
    """Fastest precision that keeps sample quality (docs/speed.md): bf16 on CPUs that have it; fp32 on
    GPUs, where these small Unets are launch-bound (docs/speed.md)."""
    if device.type == 'cpu' and cpu_has_bf16():
        return 'bf16'
    return 'fp32'


class Bf16Unet(torch.nn.Module):
    """The Unet with bf16 weights and activations, fp32 in and out.

    Faster than autocast on CPUs, which spends much of its time casting (benchmarks/bench_sampling.py; docs/speed.md).
    The sinusoidal time embedding and its MLP stay in fp32, as the timestep needs more than bf16's 8 bits.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet.to(torch.bfloat16)
        self.unet.time_mlp.float()
        self.unet.time_mlp.register_forward_hook(lambda module, args, out: out.to(torch.bfloat16))
        self.channels, self.out_dim = unet.channels, unet.out_dim
        self.self_condition = getattr(unet, 'self_condition', False)  # the library's conditional Unet has none

    def forward(self, x: torch.Tensor, time: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # the third argument: a self-conditioned Unet's x0 estimate (to bf16, as x) or a conditional one's labels
        args = tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        return self.unet(x.to(torch.bfloat16), time, *args, **kwargs).float()


class AutocastUnet(torch.nn.Module):
    """The Unet under fp16 autocast (CUDA only: fp16 needs fp32 norms, which autocast keeps)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.channels, self.out_dim = unet.channels, unet.out_dim
        self.self_condition = getattr(unet, 'self_condition', False)

    def forward(self, x: torch.Tensor, time: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16):
            return self.unet(x, time, *args, **kwargs).float()


PRECISION_WRAPPERS = {'bf16': Bf16Unet, 'fp16': AutocastUnet}


def prepare_for_inference(diffusion: Diffusion, precision: str = 'fp32', channels_last: bool = True,
                          compile: bool = False) -> Diffusion:
    """Set the Unet up for sampling, the one place precision is applied: layout-aware attention,
    channels_last, bf16 weights or fp16 autocast, optional compile."""
    holder = diffusion.model if isinstance(diffusion.model, GuidedUnet) else diffusion  # guidance stays outermost
    unet = holder.unet if holder is not diffusion else diffusion.model
    use_fast_attention(unet)
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    wrapper = PRECISION_WRAPPERS.get(precision)
    if wrapper and not isinstance(unet, tuple(PRECISION_WRAPPERS.values())):
        unet = wrapper(unet)
    if compile:
        unet = torch.compile(unet)
    if holder is diffusion:
        diffusion.model = unet
    else:
        holder.unet = unet
    return diffusion


def initial_noise(num_images: int, channels: int, image_size: int, seed: int) -> torch.Tensor:
    """x_T for image i depends only on (seed, i): drawn on the CPU, so it is the same on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_images, channels, image_size, image_size, generator=generator)


def check_batch(num_samples: int, batch_size: int) -> None:
    """The image counts every sampling run obeys (its sampler settings were checked when they were resolved)."""
    if num_samples < 1:
        raise UserError(f'--num_samples must be at least 1 (got {num_samples})')
    if batch_size < 1:
        raise UserError(f'--batch_size must be at least 1 (got {batch_size})')


def batch_generator(seed: int, start: int, device: str | torch.device) -> torch.Generator:
    """Per-step noise for the batch beginning at image `start`; the same for every sampler."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed << 20) + start + 1)
    return generator


@torch.inference_mode()
def denoise(diffusion: Diffusion, sampler: Any, x_T: torch.Tensor, generator: torch.Generator | None,
            clip_x0: bool = True, on_step: Callable[[], Any] | None = None) -> torch.Tensor:
    """One sampler loop from x_T to x_0 in [-1, 1] units: the library's model prediction at each timestep
    (on_step() after each: the progress bar)."""
    img = x_T.to(diffusion.device).contiguous(memory_format=torch.channels_last) * sampler.init_noise_sigma
    x0 = None  # a self-conditioned Unet sees its previous x0 estimate (zeros at the first step), as the library's loops
    for t in sampler.timesteps:
        times = torch.full((img.shape[0],), t, device=img.device, dtype=torch.long)
        prediction = diffusion.model_predictions(sampler.scale_model_input(img, t), times,
                                                 x0 if diffusion.self_condition else None, clip_x_start=clip_x0,
                                                 rederive_pred_noise=clip_x0)
        x0 = prediction.pred_x_start
        img = sampler.step(prediction, t, img, generator)
        if on_step is not None:
            on_step()
    return img.float()


def run_batch(diffusion: Diffusion, sampler: Any, x_T: torch.Tensor, generator: torch.Generator | None,
              clip_x0: bool = True, on_step: Callable[[], Any] | None = None) -> torch.Tensor:
    """One batch from x_T to images in [0, 1]."""
    return diffusion.unnormalize(denoise(diffusion, sampler, x_T, generator, clip_x0, on_step)).clamp(0, 1)


def sample(diffusion: Diffusion, settings: SamplerSettings, *, num_samples: int = 25, batch_size: int = 25,
           seed: int = 0, noise: torch.Tensor | None = None, clip_x0: bool = True,
           labels: torch.Tensor | Sequence[int] | None = None, guidance: Guidance = UNGUIDED) -> torch.Tensor:
    """Generate `num_samples` images in [0, 1], shape (N, C, H, W), on the CPU, with the configuration `settings`
    (SamplerSettings.resolve). Precision is whatever prepare_for_inference() set on the diffusion's Unet. A
    conditional model draws image i as digit labels[i] (default: balanced digits) with `guidance`; the samplers do
    not know."""
    check_batch(num_samples, batch_size)
    labels = check_labels(diffusion, labels, num_samples)
    learned = (getattr(diffusion, 'student', None) or {}).get('guidance_scale')
    if learned is not None and guidance.scale != 1:
        raise UserError(f'this student learned its teacher guided at W = {learned:g} and draws guided digits as it '
                        'is; leave the guidance scale at 1 (or distil another with distill_ddpm_mnist.py '
                        '--guidance_scale)')
    if noise is None:
        noise = initial_noise(num_samples, diffusion.channels, diffusion.image_size[0], seed)
    sampler = build_sampler(settings, diffusion)
    starts = range(0, num_samples, batch_size)
    out = []
    with progress(total=len(starts) * len(sampler.timesteps), unit='step', leave=False,
                  desc=f'{settings.strategy} {len(sampler.timesteps)} steps, {num_samples} images') as bar:
        for start in starts:
            sampler.set_timesteps(settings.steps)  # a multistep solver starts each batch without history
            generator = batch_generator(seed, start, diffusion.device)
            if labels is not None:
                diffusion.model.condition(labels[start:start + batch_size], guidance)
            out.append(run_batch(diffusion, sampler, noise[start:start + batch_size], generator, clip_x0,
                                 bar.update).cpu())
    return torch.cat(out)


def conditioning(diffusion: Diffusion, num_samples: int, *, digits: Sequence[int] | None = None,
                 guidance_scale: float = 1.0,
                 remove_parallel: bool = False, rescaled_phi: float = 0.0) -> tuple[torch.Tensor | None, Guidance]:
    """(labels, guidance) of a sampling run: `digits` (default all ten) in equal blocks on a conditional model, None
    on an unconditional one, which refuses digits and guidance in one line."""
    if not isinstance(diffusion.model, GuidedUnet):
        if digits is not None or guidance_scale != 1:
            raise UserError(f'--{"digits" if digits is not None else "guidance_scale"} needs a class-conditional '
                            'model (--conditional for the shipped one); this one is unconditional')
        return None, UNGUIDED
    classes = diffusion.model.num_classes
    if digits is not None and max(digits) >= classes:
        raise UserError(f'--digits {max(digits)} is not a class of this model: it has {classes} (0-{classes - 1})')
    labels = balanced_labels(num_samples, range(classes) if digits is None else digits)
    return labels, Guidance(guidance_scale, remove_parallel, rescaled_phi)


def check_labels(diffusion: Diffusion, labels: torch.Tensor | Sequence[int] | None,
                 num_samples: int) -> torch.Tensor | None:
    """The labels a sampling run uses: balanced digits by default on a conditional model, none on another."""
    conditional = isinstance(diffusion.model, GuidedUnet)
    if labels is not None and not conditional:
        raise UserError('--digits needs a class-conditional model (e.g. --conditional); this one is unconditional')
    if not conditional:
        return None
    labels = (balanced_labels(num_samples, range(diffusion.model.num_classes)) if labels is None
              else torch.as_tensor(labels, dtype=torch.long))
    if len(labels) != num_samples:
        raise UserError(f'{len(labels)} labels for {num_samples} images')
    return labels


def warm_up(diffusion: Diffusion, batch_size: int, settings: SamplerSettings) -> None:
    """One Unet forward at the sampling batch size, and the sampler built once (diffusers' import), so timing
    excludes one-off start-up costs."""
    build_sampler(settings, diffusion)
    device = diffusion.device
    x = torch.zeros(batch_size, diffusion.channels, *diffusion.image_size, device=device)
    t = torch.full((batch_size,), diffusion.num_timesteps - 1, device=device, dtype=torch.long)
    if isinstance(diffusion.model, GuidedUnet):
        diffusion.model.condition(balanced_labels(batch_size, range(diffusion.model.num_classes)))
    with torch.inference_mode():
        diffusion.model(x, t)
    synchronize(device)


def timed_sample(diffusion: Diffusion, settings: SamplerSettings, **kwargs: Any) -> tuple[torch.Tensor, float]:
    """sample() after a warm-up, with the device synchronised; returns (images, seconds)."""
    warm_up(diffusion, min(kwargs.get('batch_size', 25), kwargs.get('num_samples', 25)), settings)
    start = time.perf_counter()
    images = sample(diffusion, settings, **kwargs)
    synchronize(diffusion.device)
    return images, time.perf_counter() - start
