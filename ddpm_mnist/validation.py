"""One table of rules for every numeric flag of the scripts, checked right after parsing (before torch is
imported or anything is written), so a bad value is one line naming the flag, the value and what is allowed."""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any, Sequence

from .sampler_table import SAMPLERS
from .utils import UserError

Rule = namedtuple('Rule', 'ok allowed')
MAX_SEED = 2 ** 32 - 1


def at_least(low: int) -> Rule:
    """An integer >= low."""
    return Rule(lambda v: v >= low, f'an integer >= {low}')


def fraction(*, closed_top: bool) -> Rule:
    """A number in [0, 1] (closed_top) or [0, 1)."""
    top = ']' if closed_top else ')'
    return Rule(lambda v: math.isfinite(v) and 0 <= v and (v <= 1 if closed_top else v < 1), f'a number in [0, 1{top}')


def each(rule: Rule) -> Rule:
    """A list whose every element obeys `rule`."""
    return Rule(lambda values: all(rule.ok(v) for v in values), f'a comma-separated list of {rule.allowed}s')


POSITIVE_NUMBER = Rule(lambda v: math.isfinite(v) and v > 0, 'a finite number > 0')
SQUARE = Rule(lambda v: v >= 1 and math.isqrt(v) ** 2 == v, 'a square number >= 1 (the sample grid is square)')

RULES = {
    # model and diffusion
    'unet_dim': at_least(1), 'dim_mults': each(at_least(1)), 'train_timesteps': at_least(1),
    'channels': Rule(lambda v: v in (1, 3), '1 (MNIST is greyscale) or 3'),
    'image_size': at_least(8),
    # training
    'train_batch_size': at_least(1), 'train_lr': POSITIVE_NUMBER, 'train_num_steps': at_least(1),
    'gradient_accumulate_every': at_least(1), 'ema_decay': fraction(closed_top=False),
    'ema_update_every': at_least(1), 'save_and_sample_every': at_least(1), 'num_samples': at_least(1),
    'sampling_timesteps': at_least(1), 'lr_warmup_steps': at_least(0), 'cond_drop_prob': fraction(closed_top=False),
    'post_hoc_ema_every': at_least(1), 'max_minutes': POSITIVE_NUMBER, 'min_snr_gamma': POSITIVE_NUMBER,
    'lr_schedule': Rule(lambda v: v in ('constant', 'cosine'), 'constant or cosine'), 'num_fid_samples': at_least(2),
    'num_workers': at_least(0),
    'seed': Rule(lambda v: 0 <= v <= MAX_SEED, f'an integer from 0 to {MAX_SEED}'),
    # sampling
    'milestone': at_least(1), 'sample_steps': at_least(1), 'batch_size': at_least(1),
    'ddim_eta': fraction(closed_top=True),  # eta > 1 adds more noise than DDPM's posterior: not a DDIM sampler
    'compare_steps': each(at_least(1)), 'compare_etas': each(fraction(closed_top=True)),
    'compare_solver_steps': each(at_least(1)), 'guidance_scale': Rule(lambda v: math.isfinite(v) and v >= 0,
                                                                      'a finite number >= 0 (1: unguided)'),
    'guidance_rescaled_phi': fraction(closed_top=True),
    'compare_samplers': Rule(lambda names: all(n in SAMPLERS for n in names),
                             f'a comma-separated list from {",".join(SAMPLERS)}'),
}


def parse_digits(text: str) -> list[int]:
    """--digits '7' or '0,3,9' -> [7] or [0, 3, 9] (distinct digits 0-9); a one-line error for anything else."""
    try:
        digits = [int(part) for part in text.split(',')]
    except ValueError:
        digits = None
    if not digits or any(not 0 <= d <= 9 for d in digits) or len(set(digits)) != len(digits):
        raise UserError(f'--digits {text} is not allowed: use distinct digits 0-9, comma-separated (e.g. 7 or 0,3,9)')
    return digits


def check_flags(values: dict[str, Any], rules: dict[str, Rule] = RULES, extra: dict[str, Rule] | None = None) -> None:
    """Raise a one-line UserError for the first flag in `values` (flag name -> value) that breaks its rule."""
    rules = {**rules, **(extra or {})}
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None and value is not None and not rule.ok(value):
            shown = ','.join(map(str, value)) if isinstance(value, list) else value
            raise UserError(f'--{name} {shown} is not allowed: use {rule.allowed}')


def check_relations(*, image_size: int, dim_mults: Sequence[int], timesteps: int,
                    sampling_timesteps: int | None = None) -> None:
    """Rules between settings: the Unet halves the image once per level but the last; S <= T."""
    halvings = 2 ** (len(dim_mults) - 1)
    if image_size % halvings:
        raise UserError(f'--image_size {image_size} does not fit a Unet with {len(dim_mults)} levels: use a multiple '
                        f'of {halvings}')
    if sampling_timesteps is not None and sampling_timesteps > timesteps:
        raise UserError(f'--sampling_timesteps {sampling_timesteps} is more than the training timesteps T = '
                        f'{timesteps}: use 1 to {timesteps}')
