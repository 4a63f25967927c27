"""The sampler registry: every sampler, one entry each (its label, the class that runs it, how many steps it
takes, whether eta applies). The command line, validation, sweep, grid names and plot read this table; it imports
no torch, so --help and flag errors stay instant. The classes are in samplers.py.

Adding a sampler: write its class in samplers.py (or name a diffusers scheduler with options), add one entry
here, and add it to tests/test_samplers.py, which checks it against a reference implementation.
"""
from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

# builder: a class of samplers.py; options: what it is built with (for DiffusersSolver, the scheduler and its
# settings)
# default_steps: the steps a sampler takes when none are given (None: 50, at most T); student: it samples a
# distilled student only (diffusion models refuse it)
SamplerSpec = namedtuple('SamplerSpec', 'label builder all_steps uses_eta stochastic options default_steps student',
                         defaults=(None, False))


def exists(value: Any) -> bool:
    return value is not None


def default(value: Any, fallback: Any) -> Any:
    return value if exists(value) else fallback


def solver(label: str, scheduler: str, *, stochastic: bool, **options: Any) -> SamplerSpec:
    """The entry of a diffusers scheduler, built with `options`."""
    return SamplerSpec(label, 'DiffusersSolver', all_steps=False, uses_eta=False, stochastic=stochastic,
                       options=dict(scheduler=scheduler, **options))


SAMPLERS = {
    'ddpm': SamplerSpec('DDPM', 'Ddpm', all_steps=True, uses_eta=False, stochastic=True, options={}),
    'ddim': SamplerSpec('DDIM', 'Ddim', all_steps=False, uses_eta=True, stochastic=None, options={}),  # iff eta > 0
    'dpmpp_2m': solver('DPM-Solver++(2M)', 'DPMSolverMultistepScheduler', algorithm_type='dpmsolver++',
                       solver_order=2, stochastic=False),
    'dpmpp_3m': solver('DPM-Solver++(3M)', 'DPMSolverMultistepScheduler', algorithm_type='dpmsolver++',
                       solver_order=3, stochastic=False),
    'dpmpp_2m_sde': solver('DPM-Solver++(2M) SDE', 'DPMSolverMultistepScheduler', algorithm_type='sde-dpmsolver++',
                           solver_order=2, stochastic=True),
    'unipc': solver('UniPC(2)', 'UniPCMultistepScheduler', solver_order=2, predict_x0=True, solver_type='bh2',
                    stochastic=False),
    'euler_a': solver('Euler ancestral', 'EulerAncestralDiscreteScheduler', stochastic=True),
    # a distilled student's sampler (distill_ddpm_mnist.py); other models refuse it
    'consistency': SamplerSpec('Consistency', 'Consistency', all_steps=False, uses_eta=False, stochastic=True,
                               options={}, default_steps=2, student=True),
}
# the samplers of a diffusion model (every one but the students'): the sweep's default, the page's, the tests'
DIFFUSION_SAMPLERS = tuple(name for name, spec in SAMPLERS.items() if not spec.student)


def resolve_steps(name: str, steps: int | None, total_timesteps: int) -> int:
    """Steps S a sampler runs: all T for DDPM, else `steps` (default: the sampler's own, else 50; at most T)."""
    return total_timesteps if SAMPLERS[name].all_steps else default(
        steps, min(default(SAMPLERS[name].default_steps, 50), total_timesteps))


@dataclass(frozen=True)
class SamplerSettings:
    """One sampling configuration, resolved once where it enters (command line, API, page, sweep, gate): the
    sampler, the steps it runs (capped at T) and its eta (None where the sampler has none). The layers below
    take it as it is: they neither default nor re-check it."""
    strategy: str
    steps: int
    eta: float | None = None

    @classmethod
    def resolve(cls, strategy: str, steps: int | None = None, eta: float = 0.0, *,
                total_timesteps: int) -> SamplerSettings:
        """The configuration `strategy` runs with these settings on a model of T timesteps; a sampler that is not
        in the registry, steps outside 1..T or a negative eta is a one-line UserError."""
        from ddpm_mnist.utils import UserError
        if strategy not in SAMPLERS:
            raise UserError(f'unknown strategy {strategy}; use one of {", ".join(SAMPLERS)}')
        steps = resolve_steps(strategy, steps, total_timesteps)
        if not 1 <= steps <= total_timesteps:
            raise UserError(f'--sample_steps must be between 1 and the training timesteps T={total_timesteps} '
                            f'(got {steps})')
        if eta is None or eta < 0 or not math.isfinite(eta):
            raise UserError(f'--ddim_eta must be a number >= 0 (got {eta})')
        return cls(strategy, steps, float(eta) if SAMPLERS[strategy].uses_eta else None)

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS[self.strategy]

    @property
    def label(self) -> str:
        return label(self.strategy, self.steps, self.eta)

    @property
    def grid_name(self) -> str:
        return grid_name(self.strategy, self.steps, self.eta)


def label(name: str, steps: int, eta: float | None = None) -> str:
    """How tables and plots name a configuration, e.g. 'DDIM 50, eta 0.0'."""
    text = f'{SAMPLERS[name].label} {steps}'
    return f'{text}, eta {eta}' if SAMPLERS[name].uses_eta else text


def grid_name(name: str, steps: int, eta: float | None = None) -> str:
    """The original project's file names ddpm_steps{S} and ddim_steps{S}_eta{E}; {name}_steps{S} for the rest."""
    return f'{name}_steps{steps}_eta{eta}' if SAMPLERS[name].uses_eta else f'{name}_steps{steps}'
