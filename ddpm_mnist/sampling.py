"""DDPM and DDIM sampling from a library GaussianDiffusion, with paired seeds and honest timing.

The library's own loops draw their noise from the global RNG, so DDPM and DDIM would start from
different x_T whenever more than one batch is sampled, and it silently runs DDPM when asked for
DDIM with S = T. These loops reuse the library's maths (p_mean_variance, model_predictions) and
only add: a given x_T, a seeded generator for the per-step noise, and DDIM for any 1 <= S <= T.
"""
import contextlib
import ctypes
import math
import time

import torch

from .attention import use_fast_attention
from .utils import UserError


def pick_device(name='auto'):
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    available = {'cpu': True, 'cuda': torch.cuda.is_available(),
                 'mps': bool(getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available())}
    if not available.get(name.split(':')[0], False):
        raise UserError(f'--device {name} is not available on this machine; use --device auto or cpu')
    return torch.device(name)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def default_batch_size(device, num_samples):
    """Images per forward when --batch_size is not given. On a 2-core CPU batch 100 was as fast as or faster
    than 25 per image in both precisions (benchmarks/bench_sampling.py, 100 images of DDIM-50); GPUs want more."""
    return min(num_samples, 100 if device.type == 'cpu' else 500)


def keep_freed_memory():
    """Let glibc reuse freed activation buffers instead of returning them to the OS and page-faulting them
    back in at every Unet op (glibc mmaps large tensors by default). Measured with inference_comparison.py,
    100 images of DDIM-50 at batch 100 on a 2-core CPU: fp32 38-40 s -> 35 s; bf16 unchanged (about 20 s).
    Process-wide, so only the command-line scripts call it; a no-op off glibc."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 1 << 30))


def cpu_has_bf16():
    try:
        flags = open('/proc/cpuinfo').read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def default_precision(device):
    """Fastest precision that keeps sample quality (README, "Speed"): bf16 on CPUs that have it; fp32 on
    GPUs, where these small Unets are launch-bound and fp32 (TF32 convolutions) measured as fast as bf16."""
    if device.type == 'cpu' and cpu_has_bf16():
        return 'bf16'
    return 'fp32'


class Bf16Unet(torch.nn.Module):
    """The Unet with bf16 weights and activations, fp32 in and out.

    Faster than autocast on CPUs, which spends much of its time casting (benchmarks/bench_sampling.py before the
    allocator fix, 100 images of DDIM-50: 1.47x over fp32 with autocast, 1.96x with this).
    The sinusoidal time embedding and its MLP stay in fp32, as the timestep needs more than bf16's 8 bits.
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet.to(torch.bfloat16)
        self.unet.time_mlp.float()
        self.unet.time_mlp.register_forward_hook(lambda module, args, out: out.to(torch.bfloat16))
        self.channels, self.self_condition = unet.channels, unet.self_condition

    def forward(self, x, time, x_self_cond=None):
        return self.unet(x.to(torch.bfloat16), time, x_self_cond).float()


def prepare_for_inference(diffusion, precision='fp32', channels_last=True, compile=False):
    """Set the Unet up for sampling: layout-aware attention, channels_last, bf16 weights, optional compile."""
    use_fast_attention(diffusion.model)
    if channels_last:
        diffusion.model.to(memory_format=torch.channels_last)
    if precision == 'bf16' and not isinstance(diffusion.model, Bf16Unet):
        diffusion.model = Bf16Unet(diffusion.model)
    if compile:
        diffusion.model = torch.compile(diffusion.model)
    return diffusion


def autocast(device, precision):
    """fp16 runs under autocast (its range needs fp32 norms); bf16 is handled by Bf16Unet's weights."""
    if precision != 'fp16':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16)


def initial_noise(num_images, channels, image_size, seed):
    """x_T for image i depends only on (seed, i): drawn on the CPU, so it is the same on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_images, channels, image_size, image_size, generator=generator)


def ddim_times(total_timesteps, steps):
    """The library's DDIM time pairs [(T-1, next), ..., (0, -1)], exact for every 1 <= S <= T."""
    times = torch.linspace(-1, total_timesteps - 1, steps + 1, dtype=torch.float64).add(1e-6).floor().long()
    times = list(reversed(times.tolist()))
    return list(zip(times[:-1], times[1:]))


@torch.inference_mode()
def ddpm_loop(diffusion, img, generator):
    """Ancestral sampling over all T steps (the library's p_sample, with seeded noise)."""
    for t in reversed(range(diffusion.num_timesteps)):
        times = torch.full((img.shape[0],), t, device=img.device, dtype=torch.long)
        mean, _, log_variance, _ = diffusion.p_mean_variance(img, times, clip_denoised=True)
        if t > 0:
            noise = torch.randn(img.shape, generator=generator, device=img.device)
            img = mean + (0.5 * log_variance).exp() * noise
        else:
            img = mean
    return img


@torch.inference_mode()
def ddim_loop(diffusion, img, steps, eta, generator):
    """DDIM (Song et al. 2021) with the library's time spacing and clipping; eta=1, S=T equals DDPM."""
    alphas_cumprod = diffusion.alphas_cumprod
    for t, t_next in ddim_times(diffusion.num_timesteps, steps):
        times = torch.full((img.shape[0],), t, device=img.device, dtype=torch.long)
        pred_noise, x_start = diffusion.model_predictions(img, times, clip_x_start=True, rederive_pred_noise=True)
        if t_next < 0:
            img = x_start
            continue
        alpha, alpha_next = alphas_cumprod[t], alphas_cumprod[t_next]
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = (1 - alpha_next - sigma ** 2).clamp(min=0).sqrt()
        img = x_start * alpha_next.sqrt() + c * pred_noise
        if eta > 0:
            img = img + sigma * torch.randn(img.shape, generator=generator, device=img.device)
    return img


def check_settings(strategy, steps, eta, num_samples, batch_size, total_timesteps):
    if num_samples < 1:
        raise UserError(f'--num_samples must be at least 1 (got {num_samples})')
    if batch_size < 1:
        raise UserError(f'--batch_size must be at least 1 (got {batch_size})')
    if not 1 <= steps <= total_timesteps:
        raise UserError(f'--sample_steps must be between 1 and the training timesteps T={total_timesteps} '
                        f'(got {steps})')
    if eta < 0 or not math.isfinite(eta):
        raise UserError(f'--ddim_eta must be a number >= 0 (got {eta})')
    if strategy not in ('ddpm', 'ddim'):
        raise UserError(f'unknown strategy {strategy}; use ddpm or ddim')


def batch_generator(seed, start, device):
    """Per-step noise for the batch beginning at image `start`; the same for DDPM and DDIM."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed << 20) + start + 1)
    return generator


def run_batch(diffusion, x_T, strategy, steps, eta, generator, precision):
    device = diffusion.device
    with autocast(device, precision):
        img = x_T.to(device).contiguous(memory_format=torch.channels_last)
        img = ddpm_loop(diffusion, img, generator) if strategy == 'ddpm' else \
            ddim_loop(diffusion, img, steps, eta, generator)
    return diffusion.unnormalize(img.float()).clamp(0, 1)


def sample(diffusion, strategy='ddim', num_samples=25, batch_size=25, steps=50, eta=0.0, seed=0,
           precision='fp32', noise=None):
    """Generate `num_samples` images in [0, 1], shape (N, C, H, W), on the CPU. DDPM ignores `steps`.

    `precision` only switches fp16 autocast on; bf16 comes from prepare_for_inference(diffusion, 'bf16').
    """
    if strategy == 'ddpm':
        steps = diffusion.num_timesteps
    check_settings(strategy, steps, eta, num_samples, batch_size, diffusion.num_timesteps)
    if noise is None:
        noise = initial_noise(num_samples, diffusion.channels, diffusion.image_size[0], seed)
    out = []
    for start in range(0, num_samples, batch_size):
        generator = batch_generator(seed, start, diffusion.device)
        out.append(run_batch(diffusion, noise[start:start + batch_size], strategy, steps, eta, generator,
                             precision).cpu())
    return torch.cat(out)


def nfe(strategy, steps, total_timesteps):
    """Unet evaluations per image."""
    return total_timesteps if strategy == 'ddpm' else steps


def warm_up(diffusion, batch_size, precision):
    """One Unet forward at the sampling batch size, so timing excludes one-off start-up costs."""
    device = diffusion.device
    x = torch.zeros(batch_size, diffusion.channels, *diffusion.image_size, device=device)
    t = torch.full((batch_size,), diffusion.num_timesteps - 1, device=device, dtype=torch.long)
    with torch.inference_mode(), autocast(device, precision):
        diffusion.model(x, t)
    synchronize(device)


def timed_sample(diffusion, **kwargs):
    """sample() after a warm-up, with the device synchronised; returns (images, seconds)."""
    warm_up(diffusion, min(kwargs.get('batch_size', 25), kwargs.get('num_samples', 25)),
            kwargs.get('precision', 'fp32'))
    start = time.perf_counter()
    images = sample(diffusion, **kwargs)
    synchronize(diffusion.device)
    return images, time.perf_counter() - start
