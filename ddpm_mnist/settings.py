"""Model, diffusion, training and sampling settings: the presets, and SETTINGS, where each setting is declared once
-- its flag's type, help and the rule its value obeys. `add_setting` turns a declaration into a flag; the project's
ArgumentParser checks every flag's rule right after parsing, before torch is imported or anything is written, so a
bad value is one line naming the flag, the value and what is allowed; the API checks its arguments by the same
rules (check_arguments). Imports no torch, so `--help` and flag errors are instant."""
from __future__ import annotations

import copy
import math
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ddpm_mnist.sampling.registry import SAMPLERS
from ddpm_mnist.utils import BadValue, UserError

SHIPPED = Path(__file__).resolve().parent / 'pretrained' / 'ddpm_mnist_small.safetensors'  # installed with the package
SHIPPED_CONDITIONAL = SHIPPED.with_name('ddpm_mnist_conditional.safetensors')
SHIPPED_STUDENTS = {False: SHIPPED.with_name('ddpm_mnist_small_student.safetensors'),  # distilled students of each
                    True: SHIPPED.with_name('ddpm_mnist_conditional_student.safetensors')}  # (key: conditional)
SHIPPED_GUIDANCE_SCALE = 1.25  # the smallest measured W meeting both conditional targets (docs/conditional.md)

OBJECTIVES = ('pred_v', 'pred_noise', 'pred_x0')
SCHEDULES = ('cosine', 'linear', 'sigmoid')

# Settings that fix what a checkpoint's weights mean; everything else may change between runs.
MODEL_KEYS = ('dim', 'dim_mults', 'channels', 'attention', 'num_classes', 'self_condition')  # num_classes None: uncond.
ATTENTION_LAYOUTS = ('library', 'lowest')
DIFFUSION_KEYS = ('image_size', 'timesteps', 'beta_schedule', 'objective')

# The original project's values. Its objective was left at the library default, pred_v.
ORIGINAL = dict(
    model=dict(dim=64, dim_mults=[1, 2, 4, 8], channels=1),
    diffusion=dict(image_size=32, timesteps=1000, beta_schedule='cosine', objective='pred_v'),
)

PRESETS = {
    'seed': dict(
        **copy.deepcopy(ORIGINAL),
        training=dict(train_batch_size=128, train_lr=1e-5, train_num_steps=100_000, gradient_accumulate_every=2,
                      ema_decay=0.995, ema_update_every=10, amp=True, save_and_sample_every=1000, num_samples=25,
                      sampling_timesteps=None, results_folder='./results_mnist_ddpm'),
    ),
    # Sized to reach recognisable digits on a 2-core CPU in a session (docs/training.md).
    'small': dict(
        model=dict(dim=32, dim_mults=[1, 2, 2], channels=1),
        diffusion=dict(image_size=32, timesteps=1000, beta_schedule='cosine', objective='pred_v'),
        training=dict(train_batch_size=64, train_lr=2e-4, train_num_steps=3000, gradient_accumulate_every=1,
                      ema_decay=0.998, ema_update_every=1, amp=True, save_and_sample_every=300, num_samples=25,
                      sampling_timesteps=50, results_folder='./results_mnist_small'),
    ),
}
# The shipped model (scripts/train_shipped.sh), the recipe study's winner at equal wall time (docs/training.md):
PRESETS['shipped'] = dict(
    model=dict(PRESETS['small']['model'],
               attention='lowest'),            # full attention at 7x7 only: half the step of the library's layout
    diffusion=dict(PRESETS['small']['diffusion'],
                   image_size=28,               # MNIST's own size (32 px resizes it: 31 % more pixels)
                   min_snr_gamma=5),            # min-SNR-5 loss weighting (Hang et al. 2023): best of stage two
    training=dict(PRESETS['small']['training'],
                  train_batch_size=32,          # more updates per minute beat larger batches at equal wall time
                  train_lr=2.1e-4,              # 3e-4 at batch 64, scaled by sqrt(32 / 64)
                  train_num_steps=58_000,       # the first milestone past 1,800,000 images (30 epochs)
                  save_and_sample_every=2000,   # a milestone (and a resume point) every 64,000 images
                  results_folder='./runs/shipped'))

# Command-line flag -> (config section, key): the one map between flags and config.json.
MODEL_FLAGS = {
    'unet_dim': ('model', 'dim'), 'dim_mults': ('model', 'dim_mults'), 'channels': ('model', 'channels'),
    'image_size': ('diffusion', 'image_size'), 'train_timesteps': ('diffusion', 'timesteps'),
    'beta_schedule': ('diffusion', 'beta_schedule'), 'objective': ('diffusion', 'objective'),
    'attention': ('model', 'attention'), 'self_condition': ('model', 'self_condition'),
}
FLAG_OF = {key: flag for flag, (_, key) in MODEL_FLAGS.items()}


def model_overrides(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model/diffusion settings given explicitly in `values` (flag name -> value, None for not given), as
    {'model': {...}, 'diffusion': {...}}."""
    overrides = {'model': {}, 'diffusion': {}}
    for flag, (section, key) in MODEL_FLAGS.items():
        if values.get(flag) is not None:
            overrides[section][key] = values[flag]
    return overrides


LR_SCHEDULES = ('constant', 'cosine')


# ---------------------------------------------------------------- the rules every flag obeys

Rule = namedtuple('Rule', 'ok allowed')
MAX_SEED = 2 ** 32 - 1


def at_least(low: int) -> Rule:
    """An integer >= low."""
    return Rule(lambda v: is_integer(v) and v >= low, f'an integer >= {low}')


def is_integer(value: Any) -> bool:
    """An int, not a bool or a float (the API gets what a caller passes; the CLI's argparse has converted it)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fraction(*, closed_top: bool) -> Rule:
    """A number in [0, 1] (closed_top) or [0, 1)."""
    top = ']' if closed_top else ')'
    return Rule(lambda v: is_number(v) and 0 <= v and (v <= 1 if closed_top else v < 1), f'a number in [0, 1{top}')


def each(rule: Rule) -> Rule:
    """A list whose every element obeys `rule`."""
    return Rule(lambda values: isinstance(values, (list, tuple)) and all(rule.ok(v) for v in values),
                f'a comma-separated list of {rule.allowed}s')


POSITIVE_NUMBER = Rule(lambda v: is_number(v) and v > 0, 'a finite number > 0')
SQUARE = Rule(lambda v: is_integer(v) and v >= 1 and math.isqrt(v) ** 2 == v,
              'a square number >= 1 (the sample grid is square)')
DIGITS = Rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(is_integer(d) and 0 <= d <= 9 for d in v)
              and len(set(v)) == len(v), 'distinct digits 0-9, at least one (e.g. [7] or [0, 3, 9])')


@dataclass(frozen=True)
class Setting:
    """One setting's declaration: its flag's help, type (or choices) and the rule its value obeys."""
    help: str
    type: Callable[[str], Any] | None = None
    rule: Rule | None = None
    choices: Sequence[str] | None = None


def comma_ints(text: str) -> list[int]:
    """'1,2,2' -> [1, 2, 2] (an argparse type)."""
    return [int(x) for x in text.split(',')]


def on_off(text: str) -> bool | str:
    """'on' -> True, 'off' -> False (an argparse type); anything else stays text, for the rule's one-line error."""
    return {'on': True, 'off': False}.get(text, text)


def comma_floats(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0] (an argparse type)."""
    return [float(x) for x in text.split(',')]


def comma_words(text: str) -> list[str]:
    """'ddim,unipc' -> ['ddim', 'unipc'] (an argparse type)."""
    return text.split(',')


def setting_in(values: Sequence[str], help_text: str) -> Setting:
    """A setting whose value is one of `values` (argparse's choices: a wrong one is its one-line error)."""
    return Setting(help_text, choices=tuple(values), rule=Rule(lambda v: v in values, f'one of {", ".join(values)}'))


SETTINGS: dict[str, Setting] = {
    # model and diffusion (MODEL_FLAGS: where each lands in config.json)
    'unet_dim': Setting('base channel width of the Unet (original: 64)', int, at_least(1)),
    'dim_mults': Setting('comma-separated channel multipliers per Unet level (original: 1,2,4,8)', comma_ints,
                         each(at_least(1))),
    'channels': Setting("image channels (default: the data folder's dataset; MNIST: 1)", int,
                        Rule(lambda v: v in (1, 3), '1 (greyscale, as MNIST) or 3 (colour, as CIFAR-10)')),
    'image_size': Setting('side of the square images the model works on (original: 32)', int, at_least(8)),
    'train_timesteps': Setting('diffusion steps T used in training (original: 1000)', int, at_least(1)),
    'beta_schedule': setting_in(SCHEDULES, 'noise schedule (original: cosine)'),
    'attention': setting_in(ATTENTION_LAYOUTS, "where the Unet attends: library (linear attention at every level, "
                            "full attention at the lowest; the original) or lowest (only the lowest level's full "
                            "attention and the middle block's)"),
    'self_condition': Setting('on: the Unet also sees its previous x0 estimate (self-conditioning, Chen et al. 2023, '
                              '"Analog Bits"); --init_from an "off" model grows its input layer (default: off)', on_off,
                              Rule(lambda v: isinstance(v, bool), 'on or off')),
    'objective': setting_in(OBJECTIVES, 'what the Unet predicts (original: pred_v, the library default it trained '
                                        'with)'),
    # training (TRAINING_FLAGS: one-to-one onto config['training'])
    'train_batch_size': Setting('images per process per step', int, at_least(1)),
    'train_lr': Setting('Adam learning rate', float, POSITIVE_NUMBER),
    'train_num_steps': Setting('total optimiser steps (training stops there; resuming continues up to it)', int,
                               at_least(1)),
    'gradient_accumulate_every': Setting('batches accumulated per optimiser step', int, at_least(1)),
    'ema_decay': Setting('EMA decay of the weights used for sampling', float, fraction(closed_top=False)),
    'ema_update_every': Setting('update the EMA every this many steps', int, at_least(1)),
    'save_and_sample_every': Setting('steps between milestones (model-N.pt and sample-N.png)', int, at_least(1)),
    'num_samples': Setting('number of images to generate', int, at_least(1)),
    'sampling_timesteps': Setting('DDIM steps for the sample-N.png grids (default: T, i.e. DDPM as the original)',
                                  int, at_least(1)),
    'results_folder': Setting('where config.json, model-N.pt and sample-N.png go', str),
    'lr_warmup_steps': Setting('optimiser steps of linear learning-rate warm-up from 0 (default: 0, none)', int,
                               at_least(0)),
    'post_hoc_ema_every': Setting("also keep ema-pytorch's PostHocEMA (sigma_rel 0.05 and 0.28), a snapshot every "
                                  'this many steps in RESULTS/post_hoc_ema/, so the EMA length can be chosen after '
                                  'training with scripts/post_hoc_ema.py (default: off)', int, at_least(1)),
    'lr_schedule': Setting('constant, or cosine: decay to 0 at --train_num_steps after the warm-up (default: '
                           'constant, as the library)', str,
                           Rule(lambda v: v in LR_SCHEDULES, ' or '.join(LR_SCHEDULES))),
    'max_minutes': Setting('stop at the first milestone after this many minutes of training in this session (a '
                           'rerun resumes); for runs compared at equal wall time, and segments of a long run '
                           '(default: none)', float, POSITIVE_NUMBER),
    'min_snr_gamma': Setting("min-SNR-gamma loss weighting (Hang et al. 2023; the library's min_snr_loss_weight), "
                             'e.g. 5 (default: off)', float, POSITIVE_NUMBER),
    'snr_floor': Setting('lower bound on the loss weight of the x0 error, which the library\'s weighting lets '
                         'vanish at high noise: 1 is the "truncated SNR" weighting of Salimans & Ho 2022 (default: '
                         'off)', float, POSITIVE_NUMBER),
    'input_perturbation': Setting('train on inputs noised with eps + gamma * xi while the target keeps eps '
                                  '(DDPM-IP, Ning et al. 2023: the network learns to correct the drift a sampler\'s '
                                  'own errors cause); the paper uses 0.1 (default: off)', float, POSITIVE_NUMBER),
    'stable_targets': Setting('regress on the posterior mean of x0 over this many training images and the true one '
                              '(Stable Target Field, Xu et al. 2023; unconditional pred_v models) (default: off)', int,
                              at_least(1)),
    'noise_levels': Setting('P_MEAN,P_STD: train at noise levels with ln sigma ~ N(P_MEAN, P_STD^2) instead of '
                            'uniform timesteps (EDM, Karras et al. 2022: --noise_levels -1.2,1.2) (default: off)',
                            comma_floats,
                            Rule(lambda v: len(v) == 2 and all(map(is_number, v)) and v[1] > 0,
                                 'two numbers, the second > 0 (e.g. -1.2,1.2)')),
    'cond_drop_prob': Setting('share of training images whose label is replaced by the null label, so one model also '
                              'learns the unconditional score guidance needs (default: 0.1 with --conditional)',
                              float, fraction(closed_top=False)),
    'num_fid_samples': Setting('samples per FID computation', int, at_least(2)),
    'num_workers': Setting('DataLoader worker processes, used with --no-fast_path only', int, at_least(0)),
    'seed': Setting('random seed', int,
                    Rule(lambda v: is_integer(v) and 0 <= v <= MAX_SEED, f'an integer from 0 to {MAX_SEED}')),
    # sampling
    'strategy': setting_in(tuple(SAMPLERS), 'sampler: ' + ', '.join(f'{name} = {spec.label}'
                                                                     for name, spec in SAMPLERS.items())),
    'milestone': Setting('load model-N.pt from --results_folder', int, at_least(1)),
    'sample_steps': Setting('sampling steps S = Unet evaluations per image (default: T for ddpm, 50 otherwise; 1..T)',
                            int, at_least(1)),
    'batch_size': Setting('images per forward pass', int, at_least(1)),
    'ddim_eta': Setting('DDIM noise: 0 = deterministic DDIM, 1 = DDPM-like; DDIM only', float,
                        fraction(closed_top=True)),  # eta > 1 adds more noise than DDPM's posterior: not DDIM
    'compare_steps': Setting('comma-separated DDIM step counts (default: 10,20,50,100,200,1000)', comma_ints,
                             each(at_least(1))),
    'compare_etas': Setting('comma-separated DDIM eta values (default: 0,0.5,1)', comma_floats,
                            each(fraction(closed_top=True))),
    'compare_solver_steps': Setting('comma-separated step counts for the samplers other than DDPM and DDIM '
                                    '(default: 5,10,20,50)', comma_ints, each(at_least(1))),
    'compare_ddpm_samples': Setting("DDPM's N in the sweep: it draws every k-th of the sweep's x_T (k = "
                                    '--num_samples / this, which it must divide), so its row still pairs with the '
                                    'others; DDPM runs all T steps per image, the costliest row by far (default: '
                                    '--num_samples)', int, at_least(2)),
    'compare_student_steps': Setting("comma-separated step counts of --compare_student's consistency sampler "
                                     '(default: 1,2,4)', comma_ints, each(at_least(1))),
    'compare_samplers': Setting(f'comma-separated samplers to sweep, from: {",".join(SAMPLERS)} (default: all)',
                                comma_words, Rule(lambda names: all(n in SAMPLERS for n in names),
                                                  f'a comma-separated list from {",".join(SAMPLERS)}')),
    'guidance_scale': Setting('classifier-free guidance scale W, applied as eps_u + W * (eps_c - eps_u) (Ho & '
                              'Salimans 2022): 1 = the conditional model unguided, 0 = unconditional, >1 = stronger '
                              'guidance', float, Rule(lambda v: is_number(v) and 0 <= v <= 100,
                                                      'a finite number from 0 to 100 (1: unguided)')),
    'guidance_rescaled_phi': Setting("the library's rescaling of the guided output to the conditional one's spread, "
                                     'mixed in with this weight (0: off; the library uses 0.7)', float,
                                     fraction(closed_top=True)),
}
TRAINING_FLAGS = ('train_batch_size', 'train_lr', 'train_num_steps', 'gradient_accumulate_every', 'ema_decay',
                  'ema_update_every', 'save_and_sample_every', 'num_samples', 'sampling_timesteps', 'results_folder',
                  'lr_warmup_steps', 'post_hoc_ema_every', 'lr_schedule')
LOSS_LEVERS = ('min_snr_gamma', 'snr_floor', 'input_perturbation', 'stable_targets', 'noise_levels')  # model.losses
RULES = {name: setting.rule for name, setting in SETTINGS.items() if setting.rule is not None}


def check_value(flag: str, value: Any, rule: Rule | None) -> None:
    """A one-line BadValue if `value` (not None) breaks `rule`."""
    if rule is not None and value is not None and not rule.ok(value):
        shown = ','.join(map(str, value)) if isinstance(value, list) else value
        raise BadValue(f'{flag} {shown} is not allowed: use {rule.allowed}')


def check_arguments(values: dict[str, Any], rule_of: dict[str, str]) -> None:
    """The API's front end to the same rules: `values` are a function's arguments, `rule_of` names the flag whose
    rule each obeys; the first that breaks it is a BadValue (also a ValueError) naming the argument."""
    rules = {**RULES, 'digits': DIGITS}  # the CLI parses --digits itself (cli.arguments.parse_digits)
    for name, value in values.items():
        rule = rules[rule_of.get(name, name)]
        if value is not None and not rule.ok(value):
            raise BadValue(f'{name}={value!r} is not allowed: use {rule.allowed}')


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
