"""Training: the library's Trainer corrected for MNIST and for safe resuming, and the training command."""
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
from urllib.error import URLError

import denoising_diffusion_pytorch.denoising_diffusion_pytorch as library
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, set_seed
from denoising_diffusion_pytorch import Trainer
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import cycle
from ema_pytorch import PostHocEMA
from torch.utils.data import DataLoader
from torchvision import utils as torchvision_utils

from .checkpoints import (Parent, check_resumable, images_seen, load_checkpoint, read_parent, save_checkpoint,
                          segments_of)
from .conditional import LabelledBatch, is_conditional
from .data import check_training_folder, folder_info, labels_of
from .device import cpu_has_bf16, keep_freed_memory, machine_name, pick_device
from .fast_training import DEFAULT_LEVERS, CachedImages, apply_levers, decode_all, make_adam
from .hints import Config, Diffusion, PathLike
from .model import build_diffusion, versions
from .run_folder import (FolderLock, check_against_folder, milestone_path, prepare_folder, read_config, read_loss_log,
                         resolve_resume, write_loss_log)
from .settings import PRESETS
from .utils import DiskFull, UserError, ensure_writable_dir, save_grid, warn
from .validation import check_relations

# ema-pytorch's PostHocEMA (Karras et al. 2024): two power-function EMAs whose snapshots let any EMA length in
# between be synthesised after training (scripts/post_hoc_ema.py); the paper's sigma_rel values.
POST_HOC_SIGMA_RELS = (0.05, 0.28)


def post_hoc_folder(results_folder: PathLike) -> Path:
    """Where a run keeps its PostHocEMA snapshots."""
    return Path(results_folder) / 'post_hoc_ema'


class LabelledImages(torch.utils.data.Dataset):
    """The library's image Dataset with each image's digit, for a conditional model on the plain loader."""

    def __init__(self, dataset: torch.utils.data.Dataset, labels: torch.Tensor) -> None:
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index], self.labels[index]


def collate_labelled(items: list[tuple[torch.Tensor, torch.Tensor]]) -> LabelledBatch:
    """A DataLoader batch of (image, label) pairs as one LabelledBatch."""
    images, labels = zip(*items)
    return LabelledBatch(torch.stack(images), torch.stack(labels))


class GridsAfterCheckpoints:
    """torchvision.utils as the library's training loop sees it, but save_image only hands the grid to the trainer,
    whose save() writes it after the milestone's checkpoint."""

    def __init__(self, trainer: MnistTrainer) -> None:
        self.trainer = trainer

    def save_image(self, images: torch.Tensor, path: PathLike, **kwargs: Any) -> None:
        self.trainer.pending_grid = (images.detach().cpu(), path)

    def __getattr__(self, name: str) -> Any:
        return getattr(torchvision_utils, name)


class MnistTrainer(Trainer):
    """Trainer with no horizontal flips (digits are not mirror-symmetric), a settable number of
    DataLoader workers, the run's config inside every checkpoint, atomic never-overwriting saves, and
    (fast=True) the training-speed levers that benchmarks/bench_training.py measured to help: the data decoded
    once into memory, glibc keeping freed memory, channels_last with the layout-aware linear attention, fused Adam, a
    foreach EMA and (compile=True) the Unet compiled in place. The library's train() loop runs unchanged."""

    def __init__(self, diffusion: Diffusion, folder: PathLike, *, config: Config, num_workers: int = 2,
                 fast: bool = True,
                 compile: bool = False, bf16_compute: bool = False, train_lr: float = 1e-4,
                 max_minutes: float | None = None, lr_warmup_steps: int = 0, lr_schedule: str = 'constant',
                 post_hoc_ema_every: int | None = None, **kwargs: Any) -> None:
        try:
            super().__init__(diffusion, folder, augment_horizontal_flip=False, train_lr=train_lr, **kwargs)
        except (URLError, ConnectionError, TimeoutError) as err:  # only the Inception download reaches the network
            raise UserError(f'--calculate_fid needs the Inception weights, which are downloaded on first use, and the '
                            f'download failed ({getattr(err, "reason", err)}); run once with internet, or drop '
                            '--calculate_fid (scripts/training_curve.py scores milestones offline)') from None
        self.config, self.pending_grid = config, None
        self.max_minutes, self.base_lr = max_minutes, train_lr
        self.lr_warmup_steps, self.lr_schedule = lr_warmup_steps, lr_schedule
        self.wall_seconds_before, self.started = 0.0, time.time()  # wall time of earlier sessions, and this one
        self.images_seen_before, self.step_at_start = 0, 0
        self.effective_batch = effective_batch(config['training'], self.accelerator.num_processes)
        self.machines = [machine_name(self.device)]
        self.losses = {}  # step -> training loss (summed over accumulation), written as loss.csv at each milestone
        self.post_hoc = None
        # Before compiling and before the loss hook: the EMAs deep-copy the model, and the hook would copy the Trainer.
        if post_hoc_ema_every and self.accelerator.is_main_process:
            self.post_hoc = PostHocEMA(self.accelerator.unwrap_model(self.model), sigma_rels=POST_HOC_SIGMA_RELS,
                                       update_every=10, checkpoint_every_num_steps=post_hoc_ema_every,
                                       checkpoint_folder=str(post_hoc_folder(self.results_folder)))
        self.model.register_forward_hook(self.record_loss)
        images = decode_all(self.ds)  # every image read once: an unreadable file stops us here, named
        self.labels = None
        if is_conditional(config['model']):
            self.labels = torch.from_numpy(labels_of(folder, self.ds.paths)).long()
        # The levers were measured for one process; several (accelerate launch) keep the library's plain step.
        if fast and self.accelerator.num_processes == 1:
            self.use_fast_path(images, train_lr, compile, bf16_compute)
        elif bf16_compute:
            raise UserError('--mixed_precision_type bf16_compute needs the fast path in a single process; use bf16')
        else:  # the library's loader (it shards batches across processes), with a settable worker count
            dataset, collate = (self.ds, None) if self.labels is None else (
                LabelledImages(self.ds, self.labels), collate_labelled)
            dl = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=num_workers,
                            pin_memory=self.device.type == 'cuda', persistent_workers=num_workers > 0,
                            collate_fn=collate)
            self.dl = cycle(self.accelerator.prepare(dl))

    def start_from(self, parent: Parent) -> None:
        """Online and EMA weights from a parent run (--init_from), with the optimiser left fresh. The EMA keeps
        counting from the parent's steps, so its decay does not warm up again from 0."""
        self.accelerator.unwrap_model(self.model).model.load_state_dict(parent.online)
        self.ema.ema_model.model.load_state_dict(parent.ema)
        self.ema.step.fill_(sum(seg.get('steps') or 0 for seg in segments_of(parent.record['provenance'])))
        self.ema.initted.fill_(True)

    def record_loss(self, module: torch.nn.Module, args: Any, loss: torch.Tensor) -> None:
        """Forward hook on the diffusion: each training step's loss, for loss.csv."""
        if module.training:
            step = self.step + 1
            self.losses[step] = self.losses.get(step, 0.0) + loss.item() / self.gradient_accumulate_every

    def use_fast_path(self, images: torch.Tensor, train_lr: float, compile: bool, bf16_compute: bool = False) -> None:
        """The measured levers: cached batches, glibc's freed memory kept, the model levers, fused Adam, foreach EMA."""
        levers = {**DEFAULT_LEVERS, 'compile': compile, **({'precision': 'bf16'} if bf16_compute else {})}
        self.dl = CachedImages(images, self.batch_size, device=self.device, labels=self.labels,
                               memory_format=torch.channels_last if levers['channels_last'] else None)
        if self.device.type == 'cpu' and levers['keep_freed_memory']:
            keep_freed_memory()
        apply_levers(self.accelerator.unwrap_model(self.model), levers)
        self.opt = self.accelerator.prepare(make_adam(self.model.parameters(), levers['adam'], lr=train_lr,
                                                      betas=(0.9, 0.99)))
        if self.accelerator.is_main_process:
            self.ema.use_foreach = levers['ema_foreach']

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step `step` (0-based): linear warm-up from 0 over lr_warmup_steps, then
        constant or a cosine decay to 0 at train_num_steps (the library's Trainer has no schedule)."""
        warm = min(1.0, (step + 1) / self.lr_warmup_steps) if self.lr_warmup_steps else 1.0
        if self.lr_schedule == 'cosine':
            span = max(1, self.total_steps - self.lr_warmup_steps)
            progress = min(1.0, max(0, step - self.lr_warmup_steps) / span)
            warm *= 0.5 * (1 + math.cos(math.pi * progress))
        return self.base_lr * warm

    def set_lr(self, step: int) -> None:
        for group in self.plain_optimiser.param_groups:
            group['lr'] = self.lr_at(step)

    @property
    def plain_optimiser(self) -> torch.optim.Optimizer:
        return getattr(self.opt, 'optimizer', self.opt)  # under accelerate's AcceleratedOptimizer wrapper

    def after_optimiser_step(self) -> None:
        """Runs inside opt.step(), before the library's loop counts the step: the next step's learning rate, and
        the time limit, checked at milestone boundaries only so the run ends on a milestone."""
        step = self.step + 1
        self.set_lr(step)
        if self.post_hoc is not None:
            self.post_hoc.update()
        if self.max_minutes is not None and step % self.save_and_sample_every == 0 and self.time_is_up():
            self.train_num_steps = step

    def time_is_up(self) -> bool:
        up = time.time() - self.train_started >= 60 * self.max_minutes
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            up = broadcast_object_list([up])[0]
        return up

    def train(self) -> None:
        """The library's loop, with the learning-rate schedule and time limit hooked onto the optimiser step, and
        its sample-N.png held back until save() has written model-N.pt (the library writes the grid first)."""
        self.total_steps, self.train_started = self.train_num_steps, time.time()
        self.set_lr(self.step)
        handle = self.plain_optimiser.register_step_post_hook(lambda *_: self.after_optimiser_step())
        library.utils = GridsAfterCheckpoints(self)
        try:
            super().train()
        finally:
            library.utils = torchvision_utils
            handle.remove()

    def save(self, milestone: int) -> None:
        if not self.accelerator.is_main_process:
            return
        path = milestone_path(self.results_folder, milestone)
        if path.exists():
            raise UserError(f'refusing to overwrite existing {path}; resume from the latest milestone instead')
        data = {
            'step': self.step,
            'model': self.accelerator.get_state_dict(self.model),
            'opt': self.opt.state_dict(),
            'ema': self.ema.state_dict(),
            'scaler': self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            'version': self.config['versions']['denoising_diffusion_pytorch'],
            'config': self.config,
            'wall_seconds': round(self.wall_seconds_before + time.time() - self.started, 1),
            'images_seen': self.images_seen_before + (self.step - self.step_at_start) * self.effective_batch,
            'machines': self.machines,
        }
        intact = f'milestones up to {milestone - 1} are intact' if milestone > 1 else 'no milestone was written'
        try:
            save_checkpoint(data, path)
        except DiskFull as err:
            raise UserError(f'{err}; {intact}, free some space and rerun to resume') from None
        except OSError as err:
            raise UserError(f'could not write {path}: {err.strerror or err}; {intact}, free some space and rerun to '
                            'resume') from None
        try:  # the milestone's grid and the loss log only once its checkpoint is safely in place
            if self.pending_grid is not None:
                save_grid(*self.pending_grid, record=dict(milestone=milestone, step=self.step))
                self.pending_grid = None
            write_loss_log(self.results_folder, self.losses)
        except DiskFull as err:
            raise UserError(f'{err}; model-{milestone}.pt was written, rerun to resume from it') from None

    def load(self, milestone: int) -> None:
        try:
            super().load(milestone)
        except Exception:
            load_checkpoint(milestone_path(self.results_folder, milestone))  # names what is wrong, one line
            raise
        self.losses = {step: loss for step, loss in read_loss_log(self.results_folder).items() if step <= self.step}
        earlier = load_checkpoint(milestone_path(self.results_folder, milestone))
        self.wall_seconds_before = float(earlier.get('wall_seconds', 0.0))
        self.images_seen_before = images_seen(earlier, earlier.get('config') or self.config)
        self.step_at_start = self.step
        self.machines = list(dict.fromkeys([*earlier.get('machines', []), *self.machines]))
        self.started = time.time()


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
                 seed: int | None = None, fast_path: bool = True, min_snr_gamma: float | None = None) -> Config:
    """The run's config: the preset, with the model, diffusion and training settings given explicitly on top."""
    config = copy.deepcopy(PRESETS[preset])
    config['model'].update(model or {})
    config['diffusion'].update(diffusion or {})
    t = config['training']
    t.update(training or {})
    if amp is not None:
        t['amp'] = amp
    t.update(preset=preset, calculate_fid=calculate_fid, seed=seed, fast_path=fast_path)
    if min_snr_gamma is not None:  # a loss weighting: changes training, not what the weights mean
        config['diffusion']['min_snr_gamma'] = min_snr_gamma
    check_training_settings(t)
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
# (Unet width x the pixels of each level x its channel multiplier, summed over levels); calibrated from the peak
# resident memory of CLI steps at two batch sizes (docs/robustness.md).
BYTES_PER_ACTIVATION_UNIT = 600
FIXED_STEP_BYTES = 1.5e9  # the interpreter, torch, the compiled graph and the cached training images


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
    """A warning with the expected duration when the original-size model is trained on a CPU."""
    if device != 'cpu' or config['model']['dim'] <= 32:
        return
    t = config['training']
    seconds = t['train_num_steps'] * CPU_SECONDS_PER_STEP * t['train_batch_size'] * t['gradient_accumulate_every'] / 256
    estimate = f'{seconds / 86400:.0f} days' if seconds > 2 * 86400 else f'{seconds / 3600:.1f} hours'
    warn(f'training the original-size model on the CPU: about {CPU_SECONDS_PER_STEP} s per 256 images on a 2-core '
         f'CPU (measured), so {t["train_num_steps"]} steps take roughly {estimate}. Use a GPU, or --preset small '
         'for CPU training.')


def train_model(*, data_folder: PathLike, preset: str = 'seed', model: dict[str, Any] | None = None,
                diffusion: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                amp: bool | None = None,
                mixed_precision_type: str = 'auto', calculate_fid: bool = False, num_fid_samples: int = 50000,
                min_snr_gamma: float | None = None, fast_path: bool = True, compile: bool | None = None,
                num_workers: int = 2, resume: str = 'auto', init_from: PathLike | None = None,
                max_minutes: float | None = None, device: str = 'auto', seed: int | None = None,
                command: str | None = None) -> None:
    """The whole training command: check, build, lock the folder, write config.json, train. `model`, `diffusion`
    and `training` are the settings given explicitly (the rest comes from the preset)."""
    config = build_config(preset=preset, model=model, diffusion=diffusion, training=training, amp=amp,
                          calculate_fid=calculate_fid, seed=seed, fast_path=fast_path, min_snr_gamma=min_snr_gamma)
    config['command'] = command or shlex.join(['python3', 'train_ddpm_mnist.py', *sys.argv[1:]])
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


def effective_batch(training: dict[str, Any], num_processes: int) -> int:
    """Images one optimiser step draws: batch x accumulation x processes."""
    return training['train_batch_size'] * training['gradient_accumulate_every'] * num_processes


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
    diffusion = build_diffusion(config, sampling_timesteps=training['sampling_timesteps'], training=True)
    return MnistTrainer(
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
    rate = (trainer.step - first_step) * effective / seconds
    state.print(f'trained to step {trainer.step} in {seconds:.0f} s ({rate:.1f} '
                f'images/s, milestone grids included); checkpoints in {folder}')
