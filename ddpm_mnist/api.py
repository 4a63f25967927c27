"""The public Python API: load a model, sample it, save a grid, score images. What a notebook uses.

    import ddpm_mnist
    model = ddpm_mnist.load_model()                    # the shipped model
    images = ddpm_mnist.sample(model, strategy='ddim', steps=50, n=16)
    ddpm_mnist.save_grid(images, 'grid.png')
    scores = ddpm_mnist.evaluate(images)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpm_mnist.evaluation.metrics import Evaluator, check_scorable
from ddpm_mnist.datasets import dataset_entry
from ddpm_mnist.evaluation.reference import reference_evaluator
from ddpm_mnist.training.run_folder import find_milestone, milestones
from ddpm_mnist.model.checkpoints import check_fits_precision, load_model as load_checkpoint_model
from ddpm_mnist.sampling.loop import conditioning, default_batch_size, default_precision, prepare_for_inference
from ddpm_mnist.sampling.loop import sample as sample_diffusion
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.runtime import keep_freed_memory, pick_device
from ddpm_mnist.settings import SHIPPED, SHIPPED_CONDITIONAL, SHIPPED_STUDENTS, check_arguments
from ddpm_mnist.sampling.images import save_grid as save_grid_png
from ddpm_mnist.utils import BadValue, MissingFile, UserError, file_digest

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
# sample()'s arguments -> the flag of inference_comparison.py whose rule each obeys (settings.RULES)
SAMPLE_RULES = dict(steps='sample_steps', eta='ddim_eta', n='num_samples')


@dataclass(frozen=True)
class Model:
    """A loaded model, ready to sample: the library's GaussianDiffusion and the settings it was trained with."""
    diffusion: Any  # denoising_diffusion_pytorch.GaussianDiffusion
    config: dict
    path: Path
    precision: str
    info: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.config['diffusion']['image_size'])

    @property
    def timesteps(self) -> int:
        return int(self.diffusion.num_timesteps)

    @property
    def device(self) -> torch.device:
        return self.diffusion.device


def checkpoint_path(path: str | Path | None = None, *, milestone: int | None = None, conditional: bool = False,
                    student: bool = False) -> Path:
    """The file a model is read from: none -> the shipped model (conditional: the shipped class-conditional one;
    student: its distilled student); a run folder -> its latest (or given) milestone; a file -> itself."""
    if path is None:
        if milestone is not None:
            raise UserError('milestone needs the run folder it belongs to (path)')
        if student:
            shipped = SHIPPED_STUDENTS[conditional]
            if not shipped.is_file():
                raise UserError(f'no distilled student is shipped yet ({shipped}): distil one with '
                                'distill_ddpm_mnist.py and pass its run folder or export as the checkpoint')
            return shipped
        shipped = SHIPPED_CONDITIONAL if conditional else SHIPPED
        if not shipped.is_file():
            raise UserError(f'the shipped model {shipped} is missing; pass a checkpoint or a run folder')
        return shipped
    if conditional:
        raise UserError('conditional selects the shipped conditional model; with a path, leave it out')
    path = Path(path)
    if path.is_dir():
        found = milestones(path)
        if milestone is None and not found:
            raise UserError(f'{path} holds no model-N.pt milestones; train first or give a checkpoint file')
        return find_milestone(path, found[-1] if milestone is None else milestone)
    if milestone is not None:
        raise UserError(f'milestone {milestone} given with the file {path}; give its run folder instead')
    if not path.is_file():
        raise MissingFile(f'{path} does not exist; give a checkpoint file, an export or a run folder')
    return path


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> the device's default (bf16 on CPUs that have it, else fp32); fp16 only on CUDA."""
    if precision not in PRECISIONS:
        raise BadValue(f'precision {precision!r} is not one of {", ".join(PRECISIONS)}')
    if precision == 'fp16' and device.type != 'cuda':
        raise BadValue('precision fp16 needs CUDA; use bf16 or fp32 on this device')
    return default_precision(device) if precision == 'auto' else precision


def load_model(path: str | Path | None = None, *, milestone: int | None = None, conditional: bool = False,
               student: bool = False, device: str = 'auto', precision: str = 'auto', use_ema: bool = True,
               overrides: dict | None = None, channels_last: bool = True, compile: bool = False) -> Model:
    """The one way in to a model, for the API, the commands and the scripts: the shipped model (no path; conditional:
    the class-conditional one; student: the shipped model's distilled student), a run folder's latest or given
    milestone, or a checkpoint or export file, on `device` ('auto': CUDA, then MPS, then CPU) in `precision`
    ('auto': bf16 on CPUs that have it, else fp32), ready to sample. `overrides`: config settings the file does not
    record (a plain lucidrains checkpoint)."""
    torch_device = pick_device(device)
    chosen = resolve_precision(precision, torch_device)
    file = checkpoint_path(path, milestone=milestone, conditional=conditional, student=student)
    if torch_device.type == 'cpu':
        keep_freed_memory()
    diffusion, config, info = load_checkpoint_model(file, overrides or {}, use_ema=use_ema, device=torch_device)
    check_fits_precision(file, diffusion.model.parameters(), chosen)
    prepare_for_inference(diffusion, chosen, channels_last=channels_last, compile=compile)
    return Model(diffusion=diffusion, config=config, path=file, precision=chosen, info=info)


def teacher_path(model: Model) -> Path:
    """The file a distilled student learned from: the path its run recorded, else the shipped model with the digest
    it recorded (a student shipped, or carried to another machine)."""
    recorded = Path(model.diffusion.student['teacher'])
    if recorded.is_file():
        return recorded
    from ddpm_mnist.training.distill import teacher_digest
    digest = teacher_digest(model.config)
    found = [path for path in (SHIPPED, SHIPPED_CONDITIONAL) if path.is_file() and file_digest(path) == digest]
    if not found:
        raise MissingFile(f'the teacher of {model.path} ({recorded}, digest {digest}) is not here; give its file')
    return found[0]


def sample(model: Model, *, strategy: str = 'ddim', steps: int | None = 50, eta: float = 0.0, n: int = 16,
           seed: int = 0, batch_size: int | None = None, digits: list[int] | None = None,
           guidance_scale: float = 1.0) -> torch.Tensor:
    """n images in [0, 1], shape (n, C, H, W), on the CPU. Image i starts from the same x_T for every sampler
    (seeded by `seed`); DDPM always runs all T steps. A class-conditional model draws `digits` (default all ten) in
    equal numbers, in blocks of one digit, with classifier-free guidance eps_u + W (eps_c - eps_u), W =
    guidance_scale (1: unguided). Every argument is checked, before any work, by the rule of its flag in
    inference_comparison.py; a bad one raises BadValue (a ValueError) naming it."""
    check_arguments(dict(strategy=strategy, steps=steps, eta=eta, n=n, seed=seed, batch_size=batch_size,
                         digits=digits, guidance_scale=guidance_scale), SAMPLE_RULES)
    if steps is not None and steps > model.timesteps:
        raise BadValue(f'steps={steps} is not allowed: use 1 to the model\'s training timesteps T={model.timesteps}')
    batch = default_batch_size(model.device, n) if batch_size is None else batch_size
    labels, guidance = conditioning(model.diffusion, n, digits=digits, guidance_scale=guidance_scale)
    settings = SamplerSettings.resolve(strategy, steps, eta, total_timesteps=model.timesteps)
    return sample_diffusion(model.diffusion, settings, num_samples=n, batch_size=batch, seed=seed, labels=labels,
                            guidance=guidance)


def save_grid(images: torch.Tensor, path: str | Path, *, record: dict | None = None) -> Path:
    """A square grid PNG of images in [0, 1], each shown at 56 px or more, written atomically (with `record`
    stored inside it). Images that are not a finite (N, C, H, W) tensor are a BadValue, before anything is written."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not len(images):
        shape = tuple(images.shape) if hasattr(images, 'shape') else type(images).__name__
        raise BadValue(f'images of shape {shape} cannot be saved as a grid: give a tensor (N, C, H, W) in [0, 1]')
    if not torch.isfinite(images).all():
        raise BadValue('images hold NaN or infinite values; the model or sampler that made them is broken')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid_png(images, path, record)
    return path


def evaluate(images: torch.Tensor, *, raw_dir: str | None = None, data_root: str = './data', seed: int = 0,
             image_size: int | None = None, dataset: str | None = None) -> dict:
    """The sweep's scores of images in [0, 1] against the dataset's test split (MNIST by default: FID with its 95 %
    interval, IS, confidence, class balance, precision/recall, near-copies); with no MNIST on disk, against the
    shipped test-split statistics (FID, IS, confidence, class balance). image_size: the size the model was trained at
    (default: the images' own). Another dataset (see ddpm_mnist.datasets) needs its raw files in raw_dir and its
    classifier (scripts/train_classifier.py --dataset NAME)."""
    check_scorable(images, dataset_entry(dataset).channels or getattr(images, 'shape', (0, 1))[1])
    size = int(image_size or images.shape[-1])
    return cached_evaluator(raw_dir, data_root, seed, size, dataset).score(images)


@functools.lru_cache(maxsize=4)
def cached_evaluator(raw_dir: str | None, data_root: str, seed: int, image_size: int,
                     dataset: str | None = None) -> Evaluator:
    return reference_evaluator(image_size=image_size, raw_dir=raw_dir, data_root=data_root, seed=seed,
                               dataset=dataset).evaluator
