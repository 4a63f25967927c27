"""Every sampler, defined once. Each is an object in the diffusers style, `set_timesteps(S)` then `step(...)`
once per timestep, and one entry in SAMPLERS (its label, how many steps it takes, whether eta applies); the
command line, validation, sweep, grid names and plot all read this table.

Adding a sampler: write its class (or wrap a diffusers scheduler in `solver(...)`), add one SAMPLERS entry,
and add it to tests/test_samplers.py, which checks it against a reference implementation.

A step receives the library's own model prediction, `GaussianDiffusion.model_predictions` with x0 clipped to
[-1, 1] and the noise re-derived from the clipped x0 (what the library's DDIM does), so every sampler clips the
same way and works with every objective (pred_noise, pred_x0, pred_v) the checkpoint was trained with.
"""
from collections import namedtuple

SamplerSpec = namedtuple('SamplerSpec', 'label build all_steps uses_eta stochastic')


def exists(value):
    return value is not None


def default(value, fallback):
    return value if exists(value) else fallback


def full_times(t, like):
    import torch  # here, not at the top: the command lines read SAMPLERS before torch is loaded
    return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)


def step_noise(like, generator):
    import torch
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


class Ddpm:
    """Ancestral sampling over all T steps (Ho et al. 2020, Eq. 6-7): x_{t-1} ~ q(x_{t-1} | x_t, x0_pred)."""
    init_noise_sigma = 1.0

    def __init__(self, diffusion, *, eta=None):
        self.diffusion = diffusion

    def set_timesteps(self, steps):
        self.timesteps = list(reversed(range(self.diffusion.num_timesteps)))

    def scale_model_input(self, x, t):
        return x

    def step(self, prediction, t, x, generator):
        mean, _, log_variance = self.diffusion.q_posterior(prediction.pred_x_start, x, full_times(t, x))
        if t == 0:
            return mean
        return mean + (0.5 * log_variance).exp() * step_noise(x, generator)


def ddim_times(total_timesteps, steps):
    """The library's DDIM time pairs [(T-1, next), ..., (0, -1)] for 1 <= S <= T, computed exactly as
    GaussianDiffusion.ddim_sample does (float32 linspace, truncated), so the two agree for every S."""
    import torch
    times = torch.linspace(-1, total_timesteps - 1, steps=steps + 1).int().tolist()
    times = list(reversed(times))
    return list(zip(times[:-1], times[1:]))


class Ddim:
    """DDIM (Song et al. 2021) on the library's time pairs; eta = 0 deterministic, eta = 1 with S = T is DDPM."""
    init_noise_sigma = 1.0

    def __init__(self, diffusion, *, eta=0.0):
        self.diffusion, self.eta = diffusion, eta

    def set_timesteps(self, steps):
        pairs = ddim_times(self.diffusion.num_timesteps, steps)
        self.timesteps, self.next_time = [t for t, _ in pairs], dict(pairs)

    def scale_model_input(self, x, t):
        return x

    def step(self, prediction, t, x, generator):
        t_next = self.next_time[t]
        if t_next < 0:
            return prediction.pred_x_start
        alpha, alpha_next = self.diffusion.alphas_cumprod[t], self.diffusion.alphas_cumprod[t_next]
        sigma = self.eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()  # Eq. 16
        c = (1 - alpha_next - sigma ** 2).clamp(min=0).sqrt()
        x = prediction.pred_x_start * alpha_next.sqrt() + c * prediction.pred_noise  # Eq. 12
        return x + sigma * step_noise(x, generator) if self.eta > 0 else x


class DiffusersSolver:
    """A diffusers scheduler driven by the library's model: built from the checkpoint's own betas, fed the
    library's (clipped, re-derived) noise prediction, timesteps 'trailing' so the first step is at T-1 like
    DDIM's. diffusers is imported only when such a sampler is asked for."""

    def __init__(self, diffusion, *, scheduler, eta=None, **options):
        import inspect

        import diffusers
        betas = diffusion.betas.detach().double().cpu().numpy()
        self.scheduler = getattr(diffusers, scheduler)(
            num_train_timesteps=len(betas), trained_betas=betas, prediction_type='epsilon',
            timestep_spacing='trailing', **options)
        self.device = diffusion.betas.device
        self.takes_generator = 'generator' in inspect.signature(self.scheduler.step).parameters

    @property
    def init_noise_sigma(self):
        return float(self.scheduler.init_noise_sigma)

    def set_timesteps(self, steps):
        self.scheduler.set_timesteps(steps, device=self.device)  # also resets a multistep solver's history
        self.timesteps = [int(t) for t in self.scheduler.timesteps]  # the library's model takes integer t
        self.scheduler_time = dict(zip(self.timesteps, self.scheduler.timesteps))  # the scheduler wants its own

    def scale_model_input(self, x, t):
        return self.scheduler.scale_model_input(x, self.scheduler_time[t])

    def step(self, prediction, t, x, generator):
        noise = dict(generator=generator) if self.takes_generator else {}
        return self.scheduler.step(prediction.pred_noise, self.scheduler_time[t], x, **noise).prev_sample


def solver(scheduler, **options):
    def build(diffusion, *, eta=None):
        return DiffusersSolver(diffusion, scheduler=scheduler, **options)
    return build


SAMPLERS = {
    'ddpm': SamplerSpec('DDPM', Ddpm, all_steps=True, uses_eta=False, stochastic=True),
    'ddim': SamplerSpec('DDIM', Ddim, all_steps=False, uses_eta=True, stochastic=None),  # stochastic iff eta > 0
    'dpmpp_2m': SamplerSpec('DPM-Solver++(2M)', solver('DPMSolverMultistepScheduler', algorithm_type='dpmsolver++',
                                                       solver_order=2), all_steps=False, uses_eta=False,
                            stochastic=False),
    'dpmpp_3m': SamplerSpec('DPM-Solver++(3M)', solver('DPMSolverMultistepScheduler', algorithm_type='dpmsolver++',
                                                       solver_order=3), all_steps=False, uses_eta=False,
                            stochastic=False),
    'dpmpp_2m_sde': SamplerSpec('DPM-Solver++(2M) SDE', solver('DPMSolverMultistepScheduler',
                                                               algorithm_type='sde-dpmsolver++', solver_order=2),
                                all_steps=False, uses_eta=False, stochastic=True),
    'unipc': SamplerSpec('UniPC(2)', solver('UniPCMultistepScheduler', solver_order=2, predict_x0=True,
                                            solver_type='bh2'), all_steps=False, uses_eta=False, stochastic=False),
    'euler_a': SamplerSpec('Euler ancestral', solver('EulerAncestralDiscreteScheduler'), all_steps=False,
                           uses_eta=False, stochastic=True),
}


def resolve_steps(name, steps, total_timesteps):
    """Steps S a sampler runs: all T for DDPM, else `steps` (default 50, at most T)."""
    return total_timesteps if SAMPLERS[name].all_steps else default(steps, min(50, total_timesteps))


def nfe(name, steps, total_timesteps):
    """Unet evaluations per image: one per step for every sampler here."""
    return resolve_steps(name, steps, total_timesteps)


def label(name, steps, eta=None):
    text = f'{SAMPLERS[name].label} {steps}'
    return f'{text}, eta {eta}' if SAMPLERS[name].uses_eta else text


def grid_name(name, steps, eta=None):
    """The original project's file names ddpm_steps{S} and ddim_steps{S}_eta{E}; {name}_steps{S} for the rest."""
    return f'{name}_steps{steps}_eta{eta}' if SAMPLERS[name].uses_eta else f'{name}_steps{steps}'


def build_sampler(name, diffusion, *, eta=0.0):
    return SAMPLERS[name].build(diffusion, eta=eta)
