"""The library's Trainer, corrected for MNIST and for safe resuming."""
import os
from pathlib import Path

from denoising_diffusion_pytorch import Trainer
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import cycle
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, milestone_path, milestones, save_checkpoint
from .sampling import pick_device
from .utils import UserError, remove_orphans


class MnistTrainer(Trainer):
    """Trainer with no horizontal flips (digits are not mirror-symmetric), a settable number of
    DataLoader workers, the run's config inside every checkpoint, and atomic, never-overwriting saves."""

    def __init__(self, diffusion, folder, *, config, num_workers=2, **kwargs):
        super().__init__(diffusion, folder, augment_horizontal_flip=False, **kwargs)
        self.config = config
        # The library hard-codes num_workers=cpu_count(); rebuild the loader with the requested count.
        dl = DataLoader(self.ds, batch_size=self.batch_size, shuffle=True, num_workers=num_workers,
                        pin_memory=self.device.type == 'cuda', persistent_workers=num_workers > 0)
        self.dl = cycle(self.accelerator.prepare(dl))

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
        }
        try:
            save_checkpoint(data, path)
        except OSError as err:
            raise UserError(f'could not write {path}: {err.strerror or err}; earlier milestones are intact, free '
                            'some space and rerun to resume') from None

    def load(self, milestone):
        try:
            super().load(milestone)
        except Exception:
            load_checkpoint(milestone_path(self.results_folder, milestone))  # names what is wrong, one line
            raise


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
    if requested in (None, 'auto'):
        return 'fp16' if device_type == 'cuda' else 'bf16'
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


def remove_stale_temporaries(folder):
    """Delete half-written checkpoint temporaries left by a killed run."""
    remove_orphans(Path(folder).glob('.model-*.pt.tmp-*'), lambda tmp: tmp.unlink(missing_ok=True))
