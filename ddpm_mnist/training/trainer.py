"""The library's Trainer corrected for MNIST, with a loop of its own: no flips, fast_training.training_step for every
step (learning-rate schedule, EMA and PostHocEMA inside it), the run's config in every atomic checkpoint, each
milestone's grid written after its checkpoint, a time limit checked at milestones, and the loss log."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from accelerate.utils import broadcast_object_list
from denoising_diffusion_pytorch import GaussianDiffusion, Trainer
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import cycle, num_to_groups
from ema_pytorch import PostHocEMA
from torch.utils.data import DataLoader

from ddpm_mnist.model.checkpoints import Parent, images_seen, load_checkpoint, save_checkpoint, segments_of
from ddpm_mnist.model.conditional import LabelledBatch, is_conditional
from ddpm_mnist.model.network import grow
from ddpm_mnist.data import labels_of
from ddpm_mnist.runtime import keep_freed_memory, machine_name, progress
from ddpm_mnist.training.step import (DEFAULT_LEVERS, CachedImages, StepParts, apply_levers, decode_all, learning_rate,
                                      make_adam, training_step)
from ddpm_mnist.training.run_folder import milestone_path, read_loss_log, write_loss_log
from ddpm_mnist.sampling.images import save_grid
from ddpm_mnist.sampling.loop import sample
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.utils import Config, Diffusion, DiskFull, PathLike, UserError

# ema-pytorch's PostHocEMA (Karras et al. 2024): two power-function EMAs whose snapshots let any EMA length in
# between be synthesised after training (scripts/post_hoc_ema.py); the paper's sigma_rel values.
POST_HOC_SIGMA_RELS = (0.05, 0.28)
WARM_UP_STEPS = 50  # steps before the steady training rate is measured (torch.compile compiles in the first ones)


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


class MnistTrainer(Trainer):
    """The library's Trainer (its accelerator, EMA, dataset and checkpoint format) with no horizontal flips (digits
    are not mirror-symmetric), a settable number of DataLoader workers, the run's config inside every checkpoint,
    atomic never-overwriting saves, and (fast=True) the training-speed levers that benchmarks/bench_training.py
    measured to help: the data decoded once into memory, glibc keeping freed memory, channels_last with the
    layout-aware linear attention, fused Adam, a foreach EMA and (compile=True) the Unet compiled in place.
    train() is its own loop around fast_training.training_step."""

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
        self.config = config
        self.max_minutes, self.base_lr = max_minutes, train_lr
        self.lr_warmup_steps, self.lr_schedule = lr_warmup_steps, lr_schedule
        self.wall_seconds_before, self.started = 0.0, time.time()  # wall time of earlier sessions, and this one
        self.images_seen_before, self.step_at_start = 0, 0
        self.effective_batch = effective_batch(config['training'], self.accelerator.num_processes)
        self.machines = [machine_name(self.device)]
        self.milestone_seconds = 0.0  # this session's time in milestones (grids, checkpoints), not in steps
        self.warm = None  # (step, time, milestone seconds) once WARM_UP_STEPS steps have run in this session
        self.losses = {}  # step -> training loss (summed over accumulation), written as loss.csv at each milestone
        self.post_hoc = None
        # Before compiling: the EMAs deep-copy the model.
        if post_hoc_ema_every and self.accelerator.is_main_process:
            self.post_hoc = PostHocEMA(self.accelerator.unwrap_model(self.model), sigma_rels=POST_HOC_SIGMA_RELS,
                                       update_every=10, checkpoint_every_num_steps=post_hoc_ema_every,
                                       checkpoint_folder=str(post_hoc_folder(self.results_folder)))
        images = decode_all(self.ds)  # every image read once: an unreadable file stops us here, named
        if getattr(self.accelerator.unwrap_model(self.model), 'reference_size', 0):  # --stable_targets draws from them
            self.accelerator.unwrap_model(self.model).reference_images = images
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
        online, ema = self.accelerator.unwrap_model(self.model).model, self.ema.ema_model.model
        try:
            grown = parent.record.get('grown', [])  # attention or self-conditioning added to the parent's Unet
            grow(online, parent.online, grown)
            grow(ema, parent.ema, grown)
        except (RuntimeError, ValueError) as err:  # tensors of other shapes than the config describes
            first = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise UserError(f'--init_from {parent.record["file"]}: its weights do not fit this run\'s model '
                            f'({first[1] if len(first) > 1 else first[0]}); train with its settings or from scratch'
                            ) from None
        self.ema.step.fill_(sum(seg.get('steps') or 0 for seg in segments_of(parent.record['provenance'])))
        self.ema.initted.fill_(True)

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

    def step_parts(self) -> StepParts:
        """What training_step touches, for this run: the EMAs only on the main process, which holds them."""
        emas = (self.ema, *([self.post_hoc] if self.post_hoc is not None else [])) if (
            self.accelerator.is_main_process) else ()
        target = getattr(self.accelerator.unwrap_model(self.model), 'target', None)
        emas += (target,) if target is not None else ()  # a distilling student's target network
        schedule = dict(base=self.base_lr, warmup_steps=self.lr_warmup_steps, schedule=self.lr_schedule,
                        total_steps=self.train_num_steps)
        return StepParts(model=self.model, optimiser=self.opt, accelerator=self.accelerator,
                         learning_rate=lambda step: learning_rate(step, **schedule), emas=emas,
                         gradient_accumulate_every=self.gradient_accumulate_every, max_grad_norm=self.max_grad_norm)

    def train(self) -> None:
        """Train to train_num_steps, or to the first milestone after max_minutes: one training_step at a time, and
        at every milestone the EMA's grid, the checkpoint, then the grid and the loss log."""
        parts, self.train_started = self.step_parts(), time.time()
        main = self.accelerator.is_main_process
        with progress(initial=self.step, total=self.train_num_steps, desc='training', unit='step',
                      disable=not main) as bar:
            while self.step < self.train_num_steps:
                loss = training_step(parts, self.dl, self.step)
                self.step += 1
                self.losses[self.step] = loss
                if self.step == self.step_at_start + WARM_UP_STEPS:  # compiled and settled: the steady rate from here
                    self.warm = (self.step, time.time(), self.milestone_seconds)
                bar.set_postfix_str(f'loss {loss:.4f}', refresh=False)
                bar.update(1)
                if self.step % self.save_and_sample_every == 0:
                    if main:
                        self.milestone(self.step // self.save_and_sample_every)
                    if self.time_is_up():
                        break
        self.accelerator.print('training complete')

    def milestone(self, milestone: int) -> None:
        """The library's milestone (num_samples EMA images with its own sampler, Inception FID if asked), with the
        checkpoint written before its grid: a grid on disk always has its model-N.pt."""
        started = time.time()
        images = self.ema_grid()
        if self.calculate_fid:
            self.accelerator.print(f'fid_score: {self.fid_scorer.fid_score()}')
        self.save(milestone, grid=images)
        self.milestone_seconds += time.time() - started

    def time_is_up(self) -> bool:
        if self.max_minutes is None:
            return False
        up = time.time() - self.train_started >= 60 * self.max_minutes
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            up = broadcast_object_list([up])[0]
        return up

    def save(self, milestone: int, grid: torch.Tensor | None = None) -> None:
        """model-N.pt (atomic, never overwritten), then sample-N.png of `grid` and loss.csv."""
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
            if grid is not None:
                save_grid(grid.detach().cpu(), self.results_folder / f'sample-{milestone}.png',
                          record=dict(milestone=milestone, step=self.step))
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
        self.redraw_missing_grid(milestone)

    def redraw_missing_grid(self, milestone: int) -> None:
        """A kill between writing model-N.pt and its grid leaves the checkpoint alone: the grid is drawn again on
        resume (EMA weights, a random state of its own, so training continues as it would have), so every
        checkpoint has its grid."""
        grid = self.results_folder / f'sample-{milestone}.png'
        if grid.exists() or not self.accelerator.is_main_process:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(milestone)
            images = self.ema_grid()
        save_grid(images.cpu(), grid, record=dict(milestone=milestone, step=self.step, redrawn_on_resume=True))

    @torch.inference_mode()
    def ema_grid(self) -> torch.Tensor:
        """num_samples images of the EMA weights, a milestone's grid: the library's choice of sampler (DDIM at
        eta 0 with sampling_timesteps < T, else DDPM) through the project's loop, from the same x_T (seed 0) at every
        milestone and with its quiet-aware progress bar; a conditional model or a student draws its own way."""
        model = self.ema.ema_model.eval()
        if type(model).sample is not GaussianDiffusion.sample:
            return torch.cat([model.sample(batch_size=n) for n in num_to_groups(self.num_samples, self.batch_size)])
        settings = SamplerSettings.resolve('ddim' if model.is_ddim_sampling else 'ddpm', model.sampling_timesteps,
                                           model.ddim_sampling_eta, total_timesteps=model.num_timesteps)
        return sample(model, settings, num_samples=self.num_samples, batch_size=self.batch_size)
