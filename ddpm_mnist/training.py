"""The library's Trainer, corrected for MNIST and for safe resuming."""
import os
import time
from pathlib import Path
from urllib.error import URLError

import torch

from denoising_diffusion_pytorch import Trainer
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import cycle
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, milestone_path, milestones, save_checkpoint
from .fast_training import DEFAULT_LEVERS, CachedImages, apply_levers, decode_all, make_adam
from .sampling import cpu_has_bf16, keep_freed_memory, pick_device
from .utils import UserError, atomic_path, machine_name


class MnistTrainer(Trainer):
    """Trainer with no horizontal flips (digits are not mirror-symmetric), a settable number of
    DataLoader workers, the run's config inside every checkpoint, atomic never-overwriting saves, and
    (fast=True) the training-speed levers that benchmarks/bench_training.py measured to help: the data decoded
    once into memory, glibc keeping freed memory, channels_last with the layout-aware attention, fused Adam, a
    foreach EMA and (compile=True) the Unet compiled in place. The library's train() loop runs unchanged."""

    def __init__(self, diffusion, folder, *, config, num_workers=2, fast=True, compile=False, train_lr=1e-4,
                 **kwargs):
        try:
            super().__init__(diffusion, folder, augment_horizontal_flip=False, train_lr=train_lr, **kwargs)
        except (URLError, ConnectionError, TimeoutError) as err:  # only the Inception download reaches the network
            raise UserError(f'--calculate_fid needs the Inception weights, which are downloaded on first use, and the '
                            f'download failed ({getattr(err, "reason", err)}); run once with internet, or drop '
                            '--calculate_fid (scripts/training_curve.py scores milestones offline)') from None
        self.config = config
        self.wall_seconds_before, self.started = 0.0, time.time()  # wall time of earlier sessions, and this one
        self.machines = [machine_name(self.device)]
        self.losses = {}  # step -> training loss (summed over accumulation), written as loss.csv at each milestone
        self.model.register_forward_hook(self.record_loss)
        images = decode_all(self.ds)  # every image read once: an unreadable file stops us here, named
        # The levers were measured for one process; several (accelerate launch) keep the library's plain step.
        if fast and self.accelerator.num_processes == 1:
            self.use_fast_path(images, train_lr, compile)
        else:  # the library's loader (it shards batches across processes), with a settable worker count
            dl = DataLoader(self.ds, batch_size=self.batch_size, shuffle=True, num_workers=num_workers,
                            pin_memory=self.device.type == 'cuda', persistent_workers=num_workers > 0)
            self.dl = cycle(self.accelerator.prepare(dl))

    def record_loss(self, module, args, loss):
        if module.training:
            step = self.step + 1
            self.losses[step] = self.losses.get(step, 0.0) + loss.item() / self.gradient_accumulate_every

    def use_fast_path(self, images, train_lr, compile):
        levers = {**DEFAULT_LEVERS, 'compile': compile}
        self.dl = CachedImages(images, self.batch_size, device=self.device,
                               memory_format=torch.channels_last if levers['channels_last'] else None)
        if self.device.type == 'cpu' and levers['keep_freed_memory']:
            keep_freed_memory()
        apply_levers(self.accelerator.unwrap_model(self.model), levers)
        self.opt = self.accelerator.prepare(make_adam(self.model.parameters(), levers['adam'], lr=train_lr,
                                                      betas=(0.9, 0.99)))
        if self.accelerator.is_main_process:
            self.ema.use_foreach = levers['ema_foreach']

    def save(self, milestone):
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
            'machines': self.machines,
        }
        try:
            save_checkpoint(data, path)
            write_loss_log(self.results_folder, self.losses)
        except OSError as err:
            raise UserError(f'could not write {path}: {err.strerror or err}; earlier milestones are intact, free '
                            'some space and rerun to resume') from None

    def load(self, milestone):
        try:
            super().load(milestone)
        except Exception:
            load_checkpoint(milestone_path(self.results_folder, milestone))  # names what is wrong, one line
            raise
        model = self.accelerator.unwrap_model(self.model)
        broken = [name for name, p in model.state_dict().items() if p.is_floating_point() and not p.isfinite().all()]
        if broken:
            raise UserError(f'model-{milestone}.pt holds NaN or infinite weights (e.g. {broken[0]}); the run diverged '
                            'before it was saved. Copy an earlier milestone to a new --results_folder and resume '
                            'there, with a lower --train_lr')
        self.losses = {step: loss for step, loss in read_loss_log(self.results_folder).items() if step <= self.step}
        earlier = load_checkpoint(milestone_path(self.results_folder, milestone))
        self.wall_seconds_before = float(earlier.get('wall_seconds', 0.0))
        self.machines = list(dict.fromkeys([*earlier.get('machines', []), *self.machines]))
        self.started = time.time()


LOSS_LOG = 'loss.csv'


def write_loss_log(folder, losses):
    with atomic_path(Path(folder) / LOSS_LOG) as tmp:
        tmp.write_text('step,loss\n' + ''.join(f'{step},{loss:.6f}\n' for step, loss in sorted(losses.items())))


def read_loss_log(folder):
    """{step: loss} from a run's loss.csv (empty if there is none)."""
    path = Path(folder) / LOSS_LOG
    if not path.is_file():
        return {}
    rows = path.read_text().splitlines()[1:]
    return {int(step): float(loss) for step, loss in (row.split(',') for row in rows if row)}


def resolve_resume(folder, resume):
    """Milestone to resume from (or None), refusing anything that would roll back or overwrite."""
    existing = milestones(folder)
    latest = existing[-1] if existing else None
    if resume == 'auto':
        return latest
    if resume == 'none':
        if existing:
            raise UserError(f'{folder} already has milestones up to {latest}; starting over would overwrite them. '
                            'Use --resume auto, or a new --results_folder')
        return None
    try:
        wanted = int(resume)
    except ValueError:
        raise UserError(f'--resume must be auto, none or a milestone number (got {resume})') from None
    if wanted not in existing:
        have = ', '.join(map(str, existing)) or 'none'
        raise UserError(f'milestone {wanted} not found in {folder} (milestones there: {have})')
    if wanted != latest:
        raise UserError(f'milestone {wanted} is older than the latest, {latest}; resuming from it would overwrite '
                        f'newer milestones. Use --resume auto, or copy model-{wanted}.pt to a new --results_folder')
    return wanted


def mixed_precision(amp, requested, device_type):
    """The accelerate mixed-precision mode that works on this device: fp16 on CUDA, bf16 on CPU/MPS."""
    if not amp:
        return 'no'
    if requested in (None, 'auto'):  # a CPU without bf16 instructions emulates it, slower than fp32
        return 'fp16' if device_type == 'cuda' else 'bf16' if device_type != 'cpu' or cpu_has_bf16() else 'no'
    if requested == 'fp16' and device_type != 'cuda':
        raise UserError(f'fp16 mixed precision needs CUDA; on {device_type} use --mixed_precision_type bf16 '
                        'or --no-amp')
    return requested


def training_device(name):
    """'cuda', 'mps' or 'cpu' for --device. A forced CPU is passed on to the accelerate instance that the
    library's Trainer creates, through ACCELERATE_USE_CPU (which `accelerate launch --cpu` also sets)."""
    if name == 'cpu':
        os.environ['ACCELERATE_USE_CPU'] = 'true'
    if name == 'auto' and os.environ.get('ACCELERATE_USE_CPU', '').lower() in ('1', 'true', 'yes'):
        return 'cpu'
    return pick_device(name).type


class FolderLock:
    """An exclusive lock on a results folder, so two runs never write the same milestones.

    flock is released by the kernel when the process dies, so a crashed or killed run never leaves the
    folder locked; the PID inside the file is only there to name the holder in the error message.
    """

    def __init__(self, folder):
        self.path = Path(folder) / '.lock'
        self.handle = None

    def __enter__(self):
        import fcntl
        self.handle = open(self.path, 'a+')
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or 'another process'
            self.handle.close()
            raise UserError(f'{self.path.parent} is in use by a running training process (pid {holder}); wait for '
                            'it to finish or use another --results_folder') from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        self.handle.close()
