"""The library's Trainer corrected for MNIST: no flips, the run's config in every atomic checkpoint, grids only
after their checkpoint, a learning-rate schedule, a time limit, loss logging, PostHocEMA and the speed levers."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any
from urllib.error import URLError

import denoising_diffusion_pytorch.denoising_diffusion_pytorch as library
import torch
from accelerate.utils import broadcast_object_list
from denoising_diffusion_pytorch import Trainer
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import cycle
from ema_pytorch import PostHocEMA
from torch.utils.data import DataLoader
from torchvision import utils as torchvision_utils

from .checkpoints import Parent, images_seen, load_checkpoint, save_checkpoint, segments_of
from .conditional import LabelledBatch, is_conditional
from .data import labels_of
from .device import keep_freed_memory, machine_name
from .fast_training import DEFAULT_LEVERS, CachedImages, apply_levers, decode_all, make_adam
from .hints import Config, Diffusion, PathLike
from .run_folder import milestone_path, read_loss_log, write_loss_log
from .utils import DiskFull, UserError, save_grid

# ema-pytorch's PostHocEMA (Karras et al. 2024): two power-function EMAs whose snapshots let any EMA length in
# between be synthesised after training (scripts/post_hoc_ema.py); the paper's sigma_rel values.
POST_HOC_SIGMA_RELS = (0.05, 0.28)


def post_hoc_folder(results_folder: PathLike) -> Path:
    """Where a run keeps its PostHocEMA snapshots."""
    return Path(results_folder) / 'post_hoc_ema'


def effective_batch(training: dict[str, Any], num_processes: int) -> int:
    """Images one optimiser step draws: batch x accumulation x processes."""
    return training['train_batch_size'] * training['gradient_accumulate_every'] * num_processes


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
