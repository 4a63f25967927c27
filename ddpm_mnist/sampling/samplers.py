"""Every sampler's class, in the diffusers style: `set_timesteps(S)` then `step(...)` once per timestep. The
registry that names them (labels, steps, eta) is registry.SAMPLERS.

A step receives the library's own model prediction, `GaussianDiffusion.model_predictions` with x0 clipped to
[-1, 1] and the noise re-derived from the clipped x0 (what the library's DDIM does), so every sampler clips the
same way and works with every objective (pred_noise, pred_x0, pred_v) the checkpoint was trained with.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ddpm_mnist.utils import Diffusion, ModelPrediction
from ddpm_mnist.sampling.registry import SamplerSettings


def full_times(t: int, like: torch.Tensor) -> torch.Tensor:
    """The timestep t for every image of the batch `like`, as the library's model takes it."""
    return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)


def step_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise shaped like `like`, drawn from the batch's generator."""
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


class LibraryChain:
    """What DDPM and DDIM share: they run on the library's own q(x_t | x_0) (its q_sample), so SDEdit can enter
    their chain at any timestep."""
    init_noise_sigma = 1.0

    def scale_model_input(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x

    def start_at(self, t_start: int) -> None:
        """Keep only the timesteps at or below t_start (SDEdit enters the chain there)."""
        self.timesteps = [t for t in self.timesteps if t <= t_start]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        return self.diffusion.q_sample(x0, full_times(t, x0), noise)  # Ho et al. 2020, Eq. 4


class Ddpm(LibraryChain):
    """Ancestral sampling over all T steps (Ho et al. 2020, Eq. 6-7): x_{t-1} ~ q(x_{t-1} | x_t, x0_pred)."""

    def __init__(self, diffusion: Diffusion, *, eta: float | None = None) -> None:
        self.diffusion = diffusion

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = list(reversed(range(self.diffusion.num_timesteps)))

    def step(self, prediction: ModelPrediction, t: int, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        mean, _, log_variance = self.diffusion.q_posterior(prediction.pred_x_start, x, full_times(t, x))
        if t == 0:
            return mean
        return mean + (0.5 * log_variance).exp() * step_noise(x, generator)


def ddim_times(total_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """The library's DDIM time pairs [(T-1, next), ..., (0, -1)] for 1 <= S <= T, computed exactly as
    GaussianDiffusion.ddim_sample does (float32 linspace, truncated), so the two agree for every S."""
    times = torch.linspace(-1, total_timesteps - 1, steps=steps + 1).int().tolist()
    times = list(reversed(times))
    return list(zip(times[:-1], times[1:]))


class Ddim(LibraryChain):
    """DDIM (Song et al. 2021) on the library's time pairs; eta = 0 deterministic, eta = 1 with S = T is DDPM."""

    def __init__(self, diffusion: Diffusion, *, eta: float = 0.0) -> None:
        self.diffusion, self.eta = diffusion, eta

    def set_timesteps(self, steps: int) -> None:
        pairs = ddim_times(self.diffusion.num_timesteps, steps)
        self.timesteps, self.next_time = [t for t, _ in pairs], dict(pairs)

    def step(self, prediction: ModelPrediction, t: int, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        return ddim_step(self.diffusion, prediction, t, self.next_time[t], self.eta, generator)


def ddim_step(diffusion: Diffusion, prediction: ModelPrediction, t: int, t_next: int, eta: float,
              generator: torch.Generator | None) -> torch.Tensor:
    """From x_t to x_{t_next} (t_next < t) by the DDIM update; t_next = -1 returns the predicted x0. With eta = 1 and
    t_next = t - 1 it is DDPM's posterior step."""
    if t_next < 0:
        return prediction.pred_x_start
    alpha, alpha_next = diffusion.alphas_cumprod[t], diffusion.alphas_cumprod[t_next]
    sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()  # Eq. 16
    c = (1 - alpha_next - sigma ** 2).clamp(min=0).sqrt()
    x = prediction.pred_x_start * alpha_next.sqrt() + c * prediction.pred_noise  # Eq. 12
    return x + sigma * step_noise(x, generator) if eta > 0 else x


class Consistency(LibraryChain):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) of a distilled student: at each of S of its
    boundaries the student's f(x, t) = c_skip(t) x + c_out(t) x0(x, t) jumps to the end of the ODE; before the next
    boundary that estimate is noised again to its level (q(x_t | x0)). S = 1 is one network call."""

    def __init__(self, diffusion: Diffusion, *, eta: float | None = None) -> None:
        from ddpm_mnist.utils import UserError
        if not getattr(diffusion, 'student', None):
            raise UserError('the consistency sampler needs a distilled student (distill_ddpm_mnist.py makes one); '
                            'this model is a diffusion model: use ddim, ddpm or a solver')
        self.diffusion = diffusion
        from ddpm_mnist.training.distill import boundaries
        self.boundaries = boundaries(diffusion.num_timesteps, diffusion.student['boundaries'])[:-1]  # 0: identity

    def set_timesteps(self, steps: int) -> None:
        """S of the student's boundaries: the times its record holds for S (scripts/student_times.py chose them,
        as Song et al. 2023 chose their 2-step time by search), else spread evenly from T-1 down (S = 2: T-1 and
        the middle one)."""
        tuned = recorded_times(self.diffusion.student, steps)
        if tuned is not None:
            self.timesteps = check_times(tuned, steps, self.boundaries)
        else:
            count = len(self.boundaries)
            picks = sorted({round(i * count / steps) for i in range(min(steps, count))})
            self.timesteps = [self.boundaries[i] for i in picks]
        self.next_time = dict(zip(self.timesteps, self.timesteps[1:]))

    def step(self, prediction: ModelPrediction, t: int, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        from ddpm_mnist.training.distill import scalings
        c_skip, c_out = (c.to(x.device) for c in scalings(t))
        x0 = c_skip * x + c_out * prediction.pred_x_start  # the student's f(x_t, t): the end of the ODE
        if t not in self.next_time:
            return x0
        return self.diffusion.q_sample(x0, full_times(self.next_time[t], x), step_noise(x, generator))


def recorded_times(student: dict[str, Any], steps: int) -> Any:
    """The times a student's record holds for S steps (scripts/student_times.py), None where it holds none; a
    record whose sample_times is not {steps: times} gives [], which check_times refuses."""
    recorded = student.get('sample_times') or {}
    return recorded.get(str(steps)) if isinstance(recorded, dict) else []


def check_times(times: Any, steps: int, boundaries: list[int]) -> list[int]:
    """A student record's sample times for S steps: S of its boundaries, descending from T-1."""
    from ddpm_mnist.utils import UserError
    if (not isinstance(times, list) or len(times) != steps or not all(type(t) is int for t in times)
            or times != sorted(set(times), reverse=True)
            or not set(times) <= set(boundaries) or times[0] != boundaries[0]):
        raise UserError(f'the student\'s record holds sample_times {times} for {steps} steps, not {steps} of its '
                        f'boundaries descending from {boundaries[0]}; remove them from its .json or rerun '
                        'scripts/student_times.py')
    return list(times)


class DiffusersSolver:
    """A diffusers scheduler driven by the library's model: built from the checkpoint's own betas, fed the
    library's (clipped, re-derived) noise prediction, timesteps 'trailing' so the first step is at T-1 like
    DDIM's. diffusers is imported only when such a sampler is asked for."""

    def __init__(self, diffusion: Diffusion, *, scheduler: str, eta: float | None = None, **options: Any) -> None:
        import diffusers  # here: a second of import time, for the solvers only
        betas = diffusion.betas.detach().double().cpu().numpy()
        self.scheduler = getattr(diffusers, scheduler)(
            num_train_timesteps=len(betas), trained_betas=betas, prediction_type='epsilon',
            timestep_spacing='trailing', **options)
        self.device = diffusion.betas.device
        self.takes_generator = 'generator' in inspect.signature(self.scheduler.step).parameters

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def set_timesteps(self, steps: int) -> None:
        self.scheduler.set_timesteps(steps, device=self.device)  # also resets a multistep solver's history
        self.timesteps = [int(t) for t in self.scheduler.timesteps]  # the library's model takes integer t
        self.scheduler_time = dict(zip(self.timesteps, self.scheduler.timesteps))  # the scheduler wants its own

    def scale_model_input(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.scheduler.scale_model_input(x, self.scheduler_time[t])

    def start_at(self, t_start: int) -> None:
        """Enter the solver's schedule at its first timestep at or below t_start, as diffusers' img2img does."""
        begin = next((i for i, t in enumerate(self.timesteps) if t <= t_start), len(self.timesteps))
        self.timesteps = self.timesteps[begin:]
        self.scheduler.set_begin_index(begin)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, self.scheduler_time[t].reshape(1))

    def step(self, prediction: ModelPrediction, t: int, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        noise = dict(generator=generator) if self.takes_generator else {}
        return self.scheduler.step(prediction.pred_noise, self.scheduler_time[t], x, **noise).prev_sample


BUILDERS = {'Ddpm': Ddpm, 'Ddim': Ddim, 'DiffusersSolver': DiffusersSolver, 'Consistency': Consistency}


def build_sampler(settings: SamplerSettings, diffusion: Diffusion) -> Ddpm | Ddim | DiffusersSolver | Consistency:
    """The sampler of a configuration, for one model, with its timesteps set."""
    spec = settings.spec
    sampler = BUILDERS[spec.builder](diffusion, eta=settings.eta or 0.0, **spec.options)
    sampler.set_timesteps(settings.steps)
    return sampler
