"""The training command: the config from preset and flags, the checks made before anything is built (batch, memory,
parent weights), the folder lock, and the run of trainer.MnistTrainer."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import set_seed

from ddpm_mnist.model.checkpoints import check_resumable, read_parent
from ddpm_mnist.data import check_training_folder, fit_to_dataset, folder_info
from ddpm_mnist.runtime import cpu_has_bf16, pick_device
from ddpm_mnist.model.losses import check_loss_levers
from ddpm_mnist.model.network import build_diffusion, versions
from ddpm_mnist.training.run_folder import check_against_folder, prepare_folder, read_config, resolve_resume
from ddpm_mnist.settings import ORIGINAL, PRESETS, check_relations
from ddpm_mnist.training.distill import attach_teacher, student_diffusion
from ddpm_mnist.training.trainer import WARM_UP_STEPS, MnistTrainer, effective_batch
from ddpm_mnist.utils import Config, FolderLock, PathLike, UserError, ensure_writable_dir, warn


def mixed_precision(amp: bool, requested: str | None, device_type: str) -> str:
    """The accelerate mixed-precision mode that works on this device: fp16 on CUDA, bf16 on CPU/MPS."""
    if not amp:
        return 'no'
    if requested == 'bf16_compute':  # our lever, not accelerate's: the Unet computes in bf16 itself
        return requested
    if requested in (None, 'auto'):  # a CPU without bf16 instructions emulates it, slower than fp32
        return 'fp16' if device_type == 'cuda' else 'bf16' if device_type != 'cpu' or cpu_has_bf16() else 'no'
    if requested == 'fp16' and device_type != 'cuda':
        raise UserError(f'fp16 mixed precision needs CUDA; on {device_type} use --mixed_precision_type bf16 '
                        'or --no-amp')
    return requested


def training_device(name: str) -> str:
    """'cuda', 'mps' or 'cpu' for --device. A forced CPU is passed on to the accelerate instance that the
    library's Trainer creates, through ACCELERATE_USE_CPU (which `accelerate launch --cpu` also sets)."""
    if name == 'cpu':
        os.environ['ACCELERATE_USE_CPU'] = 'true'
    if name == 'auto' and os.environ.get('ACCELERATE_USE_CPU', '').lower() in ('1', 'true', 'yes'):
        return 'cpu'
    return pick_device(name).type


# ---------------------------------------------------------------- the training command

def build_config(*, preset: str = 'seed', model: dict[str, Any] | None = None, diffusion: dict[str, Any] | None = None,
                 training: dict[str, Any] | None = None, amp: bool | None = None, calculate_fid: bool = False,
                 seed: int | None = None, fast_path: bool = True) -> Config:
    """The run's config: the preset, with the model, diffusion and training settings given explicitly on top (the
    diffusion section includes the loss levers, model.losses: they change training, not what the weights mean)."""
    config = copy.deepcopy(PRESETS[preset])
    config['model'].update(model or {})
    config['diffusion'].update(diffusion or {})
    t = config['training']
    t.update(training or {})
    if amp is not None:
        t['amp'] = amp
    t.update(preset=preset, calculate_fid=calculate_fid, seed=seed, fast_path=fast_path)
    check_training_settings(t)
    check_loss_levers(config)
    check_relations(image_size=config['diffusion']['image_size'], dim_mults=config['model']['dim_mults'],
                    timesteps=config['diffusion']['timesteps'], sampling_timesteps=t['sampling_timesteps'])
    config['versions'] = versions()
    return config


def check_training_settings(t: dict[str, Any]) -> None:
    """Rules the library asserts deep inside Trainer, said up front (single flags are checked at parsing)."""
    if math.isqrt(t['num_samples']) ** 2 != t['num_samples']:
        raise UserError(f'--num_samples must be a square number for the sample grid (got {t["num_samples"]})')
    if t['train_batch_size'] * t['gradient_accumulate_every'] < 16:
        raise UserError('--train_batch_size x --gradient_accumulate_every must be at least 16 (the library requires '
                        'it)')


CPU_SECONDS_PER_STEP = 18  # --preset seed, bf16, 256 images per step, 2-core CPU (docs/usage.md, "Setup")
# Peak memory of a training step grows with the batch by about this many bytes per image per "activation unit"
# (Unet width x the pixels of each level x its channel multiplier, summed over levels). benchmarks/bench_memory.py
# fits 205 bytes and 0.99 GB fixed to compiled bf16 steps at batch 32-256 (docs/robustness.md); twice the per-image
# slope leaves room for fp32 machines (no bf16), where more of the saved activations are 4 bytes wide.
BYTES_PER_ACTIVATION_UNIT = 400
FIXED_STEP_BYTES = 1.0e9  # the interpreter, torch, the compiled graph and the cached training images


def activation_units(config: Config) -> int:
    """Unet width x the pixels of each level x its channel multiplier, summed: what activation memory scales with."""
    size, model = config['diffusion']['image_size'], config['model']
    return model['dim'] * sum(mult * (size // 2 ** level) ** 2 for level, mult in enumerate(model['dim_mults']))


def step_bytes(config: Config, batch: int) -> float:
    """A rough estimate of one training step's peak memory at this batch (within a factor of about 2)."""
    return FIXED_STEP_BYTES + BYTES_PER_ACTIVATION_UNIT * activation_units(config) * batch


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none, e.g. macOS)."""
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_warning(config: Config, device: str) -> None:
    """A warning, naming a batch that fits, when the step would need more memory than the machine has free."""
    t = config['training']
    available = available_bytes() if device == 'cpu' else None
    batch = t['train_batch_size']
    if available is None or step_bytes(config, batch) < 0.9 * available:
        return
    fits = int((0.9 * available - FIXED_STEP_BYTES) / (BYTES_PER_ACTIVATION_UNIT * activation_units(config)))
    advice = (f'--train_batch_size {max(1, fits)} (with --gradient_accumulate_every to keep the effective batch) '
              'fits' if fits >= 1 else 'no batch fits; free memory or use a smaller model')
    warn(f'one training step at --train_batch_size {batch} needs roughly {step_bytes(config, batch) / 1e9:.1f} GB, '
         f'{available / 1e9:.1f} GB are available; {advice}')


def cpu_warning(config: Config, device: str) -> None:
    """A warning with the expected duration when the original's Unet (the seed preset's, 36M parameters) trains on a
    CPU: the one size CPU_SECONDS_PER_STEP was measured for. Narrower or shallower Unets (a width-48 shipped recipe)
    train at the rates in docs/speed.md and get no warning."""
    model, original = config['model'], ORIGINAL['model']
    if device != 'cpu' or model['dim'] < original['dim'] or len(model['dim_mults']) < len(original['dim_mults']):
        return
    t = config['training']
    seconds = t['train_num_steps'] * CPU_SECONDS_PER_STEP * t['train_batch_size'] * t['gradient_accumulate_every'] / 256
    estimate = f'{seconds / 86400:.0f} days' if seconds > 2 * 86400 else f'{seconds / 3600:.1f} hours'
    warn(f"training the original's Unet on the CPU:"
         f' about {CPU_SECONDS_PER_STEP} s per 256 images on a 2-core '
         f'CPU (measured), so {t["train_num_steps"]} steps take roughly {estimate}. Use a GPU, or --preset small '
         'for CPU training.')


def train_model(*, data_folder: PathLike, preset: str = 'seed', model: dict[str, Any] | None = None,
                diffusion: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                amp: bool | None = None,
                mixed_precision_type: str = 'auto', calculate_fid: bool = False, num_fid_samples: int = 50000,
                fast_path: bool = True, compile: bool | None = None,
                num_workers: int = 2, resume: str = 'auto', init_from: PathLike | None = None,
                max_minutes: float | None = None, device: str = 'auto', seed: int | None = None,
                command: str | None = None, student: dict[str, Any] | None = None) -> None:
    """The whole training command: check, build, lock the folder, write config.json, train. `model`, `diffusion`
    and `training` are the settings given explicitly (the rest comes from the preset). `student`: distil the
    model `init_from` (the teacher) instead (training.distill), or its `teacher` into the student `init_from`."""
    model, diffusion = fit_to_dataset(folder_info(data_folder), model=model, diffusion=diffusion)
    config = build_config(preset=preset, model=model, diffusion=diffusion, training=training, amp=amp,
                          calculate_fid=calculate_fid, seed=seed, fast_path=fast_path)
    config['command'] = command or shlex.join(['python3', 'train_ddpm_mnist.py', *sys.argv[1:]])
    if student is not None:
        config['student'] = {'teacher': str(init_from), **student}  # a continued student names its teacher
    folder = config['training']['results_folder']
    warmup_given = 'lr_warmup_steps' in (training or {})
    num_images = check_training_folder(data_folder)
    device = training_device(device)
    state = PartialState(cpu=device == 'cpu')  # on CPU, accelerate only goes multi-process (gloo) when told
    check_batch_fits(config['training'], state.num_processes, num_images)
    precision = mixed_precision(config['training']['amp'], mixed_precision_type, device)
    config['training']['mixed_precision'] = precision
    config['training']['num_processes'] = state.num_processes
    config['data'] = {**folder_info(data_folder), 'folder': str(data_folder), 'num_images': num_images}
    parent = None
    if init_from:
        parent = read_parent(init_from, config)
        config['init_from'] = parent.record
        if not warmup_given:  # a fresh Adam on trained weights: let its moment estimates settle first
            config['training']['lr_warmup_steps'] = INIT_FROM_WARMUP_STEPS
    latest = resolve_resume(folder, resume)
    if state.is_main_process:
        check_against_folder(config, folder)
        if latest is not None:
            check_resumable(folder, latest, config)
            check_same_parent(folder, config, warmup_given=warmup_given)
    created = not Path(folder).exists()
    ensure_writable_dir(folder)
    try:
        trainer = build_trainer(config, state, device, precision, num_images, data_folder=data_folder,
                                num_workers=num_workers, fast_path=fast_path, compile=compile, seed=seed,
                                num_fid_samples=num_fid_samples, max_minutes=max_minutes)
        if parent is not None and latest is None:
            trainer.start_from(parent)
    except BaseException:  # nothing half-made: a folder this run created is removed again while still empty
        if created and state.is_main_process and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
        raise
    with contextlib.ExitStack() as stack:
        if state.is_main_process:  # one writer: config, lock and checkpoints belong to the main process
            stack.enter_context(FolderLock(folder))
            prepare_folder(folder, config)
        state.wait_for_everyone()
        train(trainer, config, state, resolve_resume(folder, resume))


INIT_FROM_WARMUP_STEPS = 200


def check_batch_fits(training: dict[str, Any], num_processes: int, num_images: int) -> None:
    """An optimiser step cannot draw more images than the folder holds."""
    effective = effective_batch(training, num_processes)
    if effective > num_images:
        raise UserError(f'an optimiser step needs {effective} images (--train_batch_size {training["train_batch_size"]}'
                        f' x --gradient_accumulate_every {training["gradient_accumulate_every"]} x {num_processes} '
                        f'processes) but the data folder holds {num_images}; use a batch of at most '
                        f'{num_images // (training["gradient_accumulate_every"] * num_processes)}')


def check_same_parent(folder: PathLike, config: Config, *, warmup_given: bool) -> None:
    """A run resumed from its milestones keeps the parent it started from (and its warm-up): --init_from may
    repeat it or be left out."""
    folder_config = read_config(folder) or {}
    existing, given = folder_config.get('init_from'), config.get('init_from')
    if given is None:
        if existing is not None:
            config['init_from'] = existing
            if not warmup_given:
                config['training']['lr_warmup_steps'] = folder_config['training'].get('lr_warmup_steps')
        return
    if existing is None or existing['sha256_16'] != given['sha256_16']:
        raise UserError(f'{folder} already holds milestones of a run that did not start from --init_from '
                        f'{given["file"]}; resume without --init_from, or use a new --results_folder')


def build_trainer(config: Config, state: PartialState, device: str, precision: str, num_images: int, *,
                  data_folder: PathLike, num_workers: int, fast_path: bool, compile: bool | None, seed: int | None,
                  num_fid_samples: int, max_minutes: float | None) -> MnistTrainer:
    """The library's classes, built and checked (data decoded) before anything is written to the folder."""
    training = config['training']
    if seed is not None:
        set_seed(seed)
    effective = effective_batch(training, state.num_processes)
    state.print(f'preset {training["preset"]}: Unet dim {config["model"]["dim"]} mults {config["model"]["dim_mults"]}, '
                f'objective {config["diffusion"]["objective"]}, {num_images} training images, device {device} x '
                f'{state.num_processes}, precision {precision}, effective batch {effective} '
                f'({training["train_batch_size"]} per process x {training["gradient_accumulate_every"]} accumulation'
                f' x {state.num_processes} processes)')
    if state.is_main_process:
        cpu_warning(config, device)
        memory_warning(config, device)
    diffusion = (student_diffusion(config) if config.get('student') else
                 build_diffusion(config, sampling_timesteps=training['sampling_timesteps'], training=True))
    trainer = MnistTrainer(
        diffusion, data_folder, config=config, num_workers=num_workers, fast=fast_path,
        compile=fast_path and (device == 'cpu' if compile is None else compile),
        train_batch_size=training['train_batch_size'], train_lr=training['train_lr'],
        train_num_steps=training['train_num_steps'],
        gradient_accumulate_every=training['gradient_accumulate_every'],
        ema_decay=training['ema_decay'], ema_update_every=training['ema_update_every'],
        bf16_compute=precision == 'bf16_compute', amp=precision not in ('no', 'bf16_compute'),
        mixed_precision_type=precision if precision not in ('no', 'bf16_compute') else 'fp16',
        results_folder=training['results_folder'], save_and_sample_every=training['save_and_sample_every'],
        num_samples=training['num_samples'], calculate_fid=training['calculate_fid'],
        num_fid_samples=num_fid_samples, max_minutes=max_minutes,
        lr_warmup_steps=training.get('lr_warmup_steps') or 0, lr_schedule=training.get('lr_schedule') or 'constant',
        post_hoc_ema_every=training.get('post_hoc_ema_every'))
    if config.get('student'):  # after the Trainer: its EMA copy of the student carries no teacher
        attach_teacher(trainer, config, device)
    return trainer


def train(trainer: MnistTrainer, config: Config, state: PartialState, resume: int | None) -> None:
    """Resume if asked, train to train_num_steps (or --max_minutes), and report images/s."""
    training = config['training']
    folder = training['results_folder']
    if resume is not None:
        trainer.load(resume)
        state.print(f'resumed from milestone {resume} (step {trainer.step}) in {folder}')
    if trainer.step >= training['train_num_steps']:
        state.print(f'already trained to step {trainer.step} of {training["train_num_steps"]}; nothing to do '
                    '(raise --train_num_steps to train further)')
        return
    effective = effective_batch(training, state.num_processes)
    started, first_step = time.time(), trainer.step
    trainer.train()
    seconds = time.time() - started
    if trainer.step < training['train_num_steps']:
        state.print(f'stopped at step {trainer.step} of {training["train_num_steps"]}: --max_minutes '
                    f'{trainer.max_minutes} reached (rerun to resume)')
    images = (trainer.step - first_step) * effective
    state.print(f'trained to step {trainer.step} in {seconds:.0f} s ({images / seconds:.1f} images/s, compiling and '
                f'{trainer.milestone_seconds:.0f} s of milestone grids and checkpoints included); checkpoints in '
                f'{folder}')
    if trainer.warm is not None and trainer.step > trainer.warm[0]:  # the rate benchmarks/bench_training.py measures
        step, started, milestones_before = trainer.warm
        steady = time.time() - started - (trainer.milestone_seconds - milestones_before)
        state.print(f'training steps after the first {WARM_UP_STEPS}: {(trainer.step - step) * effective / steady:.1f} '
                    'images/s (milestones excluded)')
