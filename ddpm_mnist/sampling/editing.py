"""Editing digits with a trained model, no training needed: inpainting (RePaint), SDEdit, DDIM inversion and
interpolation in x_T. Every operation is a way of sampling the library's GaussianDiffusion; images are (N, C, H, W)
in [0, 1] on the CPU, like sampling.sample's. A class-conditional model edits conditioned on `labels` (one class
per image) or, without them, unconditioned (its null label).
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any, Callable

import torch

from ddpm_mnist.model.conditional import GuidedUnet
from ddpm_mnist.sampling.registry import SamplerSettings, exists
from ddpm_mnist.sampling.samplers import build_sampler, ddim_step, ddim_times, full_times, step_noise
from ddpm_mnist.sampling.loop import batch_generator, check_batch, initial_noise
from ddpm_mnist.runtime import BatchCache, progress
from ddpm_mnist.utils import Diffusion, UserError

Inversion = namedtuple('Inversion', 'x_T reconstruction mse psnr')


def condition_batch(diffusion: Diffusion, labels: torch.Tensor | None, start: int, size: int) -> None:
    """Condition a class-conditional model on the labels of images start .. start + size (None: unconditioned);
    an unconditional model has nothing to condition."""
    if isinstance(diffusion.model, GuidedUnet):
        diffusion.model.condition(None if labels is None else labels[start:start + size])


# ---------------------------------------------------------------- moving along the chain

def to_model_range(images: torch.Tensor) -> torch.Tensor:
    return images * 2 - 1  # the library's normalize_to_neg_one_to_one


def predict(diffusion: Diffusion, x: torch.Tensor, t: int, clip: bool = True) -> Any:
    """The library's ModelPrediction(pred_noise, pred_x_start) at one timestep, for the whole batch."""
    return diffusion.model_predictions(x, full_times(t, x), clip_x_start=clip, rederive_pred_noise=clip)


def renoise(diffusion: Diffusion, x: torch.Tensor, t_from: int, t_to: int,
            generator: torch.Generator | None) -> torch.Tensor:
    """x_{t_to} ~ q(x_{t_to} | x_{t_from}) for t_to > t_from: the forward process between two noise levels."""
    ratio = diffusion.alphas_cumprod[t_to] / (diffusion.alphas_cumprod[t_from] if t_from >= 0 else 1.0)
    return ratio.sqrt() * x + (1 - ratio).sqrt() * step_noise(x, generator)


def noised(diffusion: Diffusion, x0: torch.Tensor, t: int, generator: torch.Generator | None) -> torch.Tensor:
    """q(x_t | x_0) (Ho et al. 2020, Eq. 4); t = -1 is x_0 itself."""
    if t < 0:
        return x0
    alpha = diffusion.alphas_cumprod[t]
    return alpha.sqrt() * x0 + (1 - alpha).sqrt() * step_noise(x0, generator)


# ---------------------------------------------------------------- inpainting (RePaint, Lugmayr et al. 2022)

def repaint_schedule(levels: int, *, jump_length: int = 10, resamples: int = 10) -> list[int]:
    """The RePaint walk over chain levels levels-1 .. 0, then -1 (x_0): down one level at a time, and at every
    jump_length-th level going down, back up jump_length levels, resamples - 1 times (the paper's schedule,
    its get_schedule_jump). resamples = 1 is plain replacement, the paper's baseline."""
    jumps = {level: resamples - 1 for level in range(0, levels - jump_length, jump_length)}
    level, path = levels - 1, [levels - 1]
    while level >= 0:
        level -= 1
        path.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                path.append(level)
    return path


def chain_times(diffusion: Diffusion, steps: int | None = None) -> list[int]:
    """The timesteps of a chain, ascending: all T for the DDPM chain (steps None), else DDIM's S."""
    total = diffusion.num_timesteps
    if steps is None:
        return list(range(total))
    return sorted(t for t, _ in ddim_times(total, steps))


def in_batches(images: torch.Tensor, batch_size: int, edit: Callable[[int, torch.Tensor], torch.Tensor],
               cache: BatchCache | None = None) -> torch.Tensor:
    """edit(start, batch) over the batches of `images`; with `cache`, each finished batch is saved, and one saved
    by an earlier run is taken instead of computed again."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        done = cache.get(start, size=len(batch)) if exists(cache) else None
        if done is None:
            done = edit(start, batch)
            if exists(cache):
                cache.put(start, done)
        out.append(done)
    return torch.cat(out)


@torch.inference_mode()
def inpaint(diffusion: Diffusion, images: torch.Tensor, mask: torch.Tensor, *, steps: int | None = None,
            eta: float = 1.0,
            jump_length: int = 10, resamples: int = 10, seed: int = 0, batch_size: int = 100,
            cache: BatchCache | None = None, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """RePaint: regenerate where mask is 1, keep the input where it is 0. Every denoising step (DDPM's posterior
    for steps=None, else the DDIM update on S steps with `eta`) is followed by the known pixels noised to the new
    level (Algorithm 1, line 8); the schedule's jumps re-noise the mixture and denoise it again, so the generated
    part can agree with the kept part. With `cache`, finished batches are saved and reused. Returns (images, NFE
    per image)."""
    times = chain_times(diffusion, steps)
    path = repaint_schedule(len(times), jump_length=jump_length, resamples=resamples)
    level_time = lambda level: times[level] if level >= 0 else -1  # noqa: E731
    noise = initial_noise(len(images), images.shape[1], images.shape[-1], seed)

    def inpaint_batch(start: int, batch: torch.Tensor) -> torch.Tensor:
        condition_batch(diffusion, labels, start, len(batch))
        generator = batch_generator(seed, start, diffusion.device)
        known = to_model_range(batch.to(diffusion.device))
        keep = 1 - mask.to(diffusion.device)
        x = noise[start:start + len(batch)].to(known.device)
        moves = list(zip(path, path[1:]))
        for here, there in progress(moves, desc=f'inpainting images {start + 1}-{start + len(batch)}', unit='step',
                                    leave=False):
            t, t_next = level_time(here), level_time(there)
            if there < here:
                x = ddim_step(diffusion, predict(diffusion, x, t), t, t_next, eta, generator)
                x = keep * noised(diffusion, known, t_next, generator) + mask.to(x.device) * x
            else:
                x = renoise(diffusion, x, t, t_next, generator)
        return diffusion.unnormalize(x).clamp(0, 1).cpu()

    return in_batches(images, batch_size, inpaint_batch, cache), sum(1 for a, b in zip(path, path[1:]) if b < a)


@torch.inference_mode()
def library_repaint(diffusion: Diffusion, images: torch.Tensor, mask: torch.Tensor, *, resample_iter: int = 10,
                    resample_jump: int = 10,
                    resample_every: int = 50, seed: int = 0, batch_size: int = 100,
                    cache: BatchCache | None = None) -> tuple[torch.Tensor, int]:
    """The library's own repaint.py loop (its GaussianDiffusion.p_sample_loop) on the same weights: its resampling
    sets t = resample_jump whatever the current t is, so it re-noises and re-samples at that fixed t. Kept to show
    what that does (docs/editing.md). Its mask is 1 where the input is kept. Returns (images, NFE per image)."""
    from denoising_diffusion_pytorch.repaint import GaussianDiffusion as RepaintDiffusion
    library = RepaintDiffusion(diffusion.model, image_size=diffusion.image_size, timesteps=diffusion.num_timesteps,
                               objective=diffusion.objective, beta_schedule='cosine').to(diffusion.device)
    for name in ('betas', 'alphas_cumprod', 'alphas_cumprod_prev', 'sqrt_alphas_cumprod',
                 'sqrt_one_minus_alphas_cumprod', 'log_one_minus_alphas_cumprod', 'sqrt_recip_alphas_cumprod',
                 'sqrt_recipm1_alphas_cumprod', 'posterior_variance', 'posterior_log_variance_clipped',
                 'posterior_mean_coef1', 'posterior_mean_coef2', 'loss_weight'):
        getattr(library, name).copy_(getattr(diffusion, name))  # the checkpoint's schedule, not the one built here

    def library_batch(start: int, batch: torch.Tensor) -> torch.Tensor:
        torch.manual_seed((seed << 20) + start + 1)  # it draws from the global generator
        gt = batch.to(diffusion.device)
        keep = (1 - mask).expand_as(gt).to(diffusion.device)
        return library.sample(gt=gt, mask=keep, resample=True, resample_iter=resample_iter,
                              resample_jump=resample_jump, resample_every=resample_every).clamp(0, 1).cpu()

    total = diffusion.num_timesteps
    resampled = sum(1 for t in range(1, total) if t % resample_every == 0 or t == 1)
    return in_batches(images, batch_size, library_batch, cache), total + resampled * resample_iter * resample_jump


# ---------------------------------------------------------------- SDEdit (Meng et al. 2022)

@torch.inference_mode()
def sdedit(diffusion: Diffusion, images: torch.Tensor, *, strength: float, settings: SamplerSettings, seed: int = 0,
           batch_size: int = 100, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Noise the inputs to the level strength x T (0 < strength <= 1) and run the sampler configuration `settings`
    (SamplerSettings.resolve) from there: the result keeps the input's layout and takes the model's style. Returns
    (images, NFE per image)."""
    if not 0 < strength <= 1 or not math.isfinite(strength):
        raise UserError(f'--strength {strength} is not allowed: use a number in (0, 1]')
    check_batch(len(images), batch_size)
    t_start = min(diffusion.num_timesteps - 1, max(0, round(strength * diffusion.num_timesteps) - 1))
    sampler = build_sampler(settings, diffusion)
    out, nfe = [], 0
    for start in range(0, len(images), batch_size):
        sampler.set_timesteps(settings.steps)
        sampler.start_at(t_start)
        if not sampler.timesteps:
            raise UserError(f'--strength {strength} is below the first of the sampler\'s {settings.steps} steps; '
                            'raise it or --steps')
        generator = batch_generator(seed, start, diffusion.device)
        x0 = to_model_range(images[start:start + batch_size].to(diffusion.device))
        condition_batch(diffusion, labels, start, len(x0))
        x = sampler.add_noise(x0, step_noise(x0, generator), sampler.timesteps[0])
        for t in progress(sampler.timesteps, desc=f'SDEdit images {start + 1}-{start + len(x0)}', unit='step',
                          leave=False):
            x = sampler.step(predict(diffusion, sampler.scale_model_input(x, t), t), t, x, generator)
        out.append(diffusion.unnormalize(x.float()).clamp(0, 1).cpu())
        nfe = len(sampler.timesteps)
    return torch.cat(out), nfe


# ---------------------------------------------------------------- DDIM inversion and interpolation

@torch.inference_mode()
def ddim_invert(diffusion: Diffusion, images: torch.Tensor, *, steps: int = 50, batch_size: int = 100,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """x_T of each image by running DDIM with eta 0 backwards (Song et al. 2021, Sec. 4.3; Dhariwal & Nichol 2021,
    App. F): x_{t_next} = sqrt(a_next) x0_pred(x_t) + sqrt(1 - a_next) eps_pred(x_t), up the S DDIM times. The
    predictions are not clipped, so generation from x_T with the same S retraces the path."""
    times = [-1, *chain_times(diffusion, steps)]
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(images[start:start + batch_size].to(diffusion.device))
        condition_batch(diffusion, labels, start, len(x))
        for t, t_next in progress(list(zip(times, times[1:])), desc=f'inverting images {start + 1}-{start + len(x)}',
                                  unit='step', leave=False):
            prediction = predict(diffusion, x, max(t, 0), clip=False)
            alpha_next = diffusion.alphas_cumprod[t_next]
            x = alpha_next.sqrt() * prediction.pred_x_start + (1 - alpha_next).sqrt() * prediction.pred_noise
        out.append(x.float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def ddim_generate(diffusion: Diffusion, x_T: torch.Tensor, *, steps: int = 50, batch_size: int = 100,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Images from given x_T by DDIM with eta 0 and unclipped predictions (the inverse of ddim_invert)."""
    pairs = ddim_times(diffusion.num_timesteps, steps)
    out = []
    for start in range(0, len(x_T), batch_size):
        x = x_T[start:start + batch_size].to(diffusion.device)
        condition_batch(diffusion, labels, start, len(x))
        for t, t_next in progress(pairs, desc=f'generating images {start + 1}-{start + len(x)}', unit='step',
                                  leave=False):
            x = ddim_step(diffusion, predict(diffusion, x, t, clip=False), t, t_next, 0.0, None)
        out.append(diffusion.unnormalize(x.float()).clamp(0, 1).cpu())
    return torch.cat(out)


def invert(diffusion: Diffusion, images: torch.Tensor, *, steps: int = 50, batch_size: int = 100,
           labels: torch.Tensor | None = None) -> Inversion:
    """Inversion(x_T, reconstruction, mse, psnr): the round trip image -> x_T -> image with the same S."""
    x_T = ddim_invert(diffusion, images, steps=steps, batch_size=batch_size, labels=labels)
    reconstruction = ddim_generate(diffusion, x_T, steps=steps, batch_size=batch_size, labels=labels)
    mse = ((reconstruction - images) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1 / mse.clamp(min=1e-10))
    return Inversion(x_T, reconstruction, mse, psnr)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation between two x_T (Shoemake 1985), which keeps them at the norm Gaussian noise has;
    a straight line would pass through lower-norm points the model never saw."""
    flat_a, flat_b = a.flatten(), b.flatten()
    cos = (flat_a @ flat_b / (flat_a.norm() * flat_b.norm())).clamp(-1, 1)
    angle = torch.arccos(cos)
    if angle < 1e-4:
        return (1 - weight) * a + weight * b
    return (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / torch.sin(angle)


def interpolate(diffusion: Diffusion, x_a: torch.Tensor, x_b: torch.Tensor, *, frames: int = 8,
                steps: int = 50, label: int | None = None) -> torch.Tensor:
    """frames images from x_a to x_b (both x_T, shape (1, C, H, W)), generated by DDIM with eta 0 (every frame
    conditioned on `label` for a class-conditional model)."""
    if frames < 2:
        raise UserError(f'--frames {frames} is not allowed: use an integer >= 2')
    path = torch.cat([slerp(x_a, x_b, w) for w in torch.linspace(0, 1, frames).tolist()])
    labels = None if label is None else torch.full((frames,), label, dtype=torch.long)
    return ddim_generate(diffusion, path, steps=steps, labels=labels)
