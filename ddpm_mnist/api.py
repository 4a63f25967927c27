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

from .metrics import Evaluator, reference_evaluator
from .run_folder import find_milestone, milestones
from .checkpoints import load_model as load_checkpoint_model
from .sampling import conditioning, default_batch_size, default_precision, prepare_for_inference
from .sampling import sample as sample_diffusion
from .device import pick_device
from .settings import SHIPPED
from .utils import UserError, save_grid as save_grid_png

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')


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


def checkpoint_path(path: str | Path | None = None, *, milestone: int | None = None) -> Path:
    """The file a path names: none -> the shipped model; a run folder -> its latest (or given) milestone."""
    if path is None:
        if milestone is not None:
            raise UserError('milestone needs the run folder it belongs to (path)')
        if not SHIPPED.is_file():
            raise UserError(f'the shipped model {SHIPPED} is missing; pass a checkpoint or a run folder')
        return SHIPPED
    path = Path(path)
    if path.is_dir():
        found = milestones(path)
        if milestone is None and not found:
            raise UserError(f'{path} holds no model-N.pt milestones; train first or give a checkpoint file')
        return find_milestone(path, found[-1] if milestone is None else milestone)
    if milestone is not None:
        raise UserError(f'milestone {milestone} given with the file {path}; give its run folder instead')
    if not path.is_file():
        raise UserError(f'{path} does not exist; give a checkpoint file, an export or a run folder')
    return path


def load_model(path: str | Path | None = None, *, milestone: int | None = None, device: str = 'auto',
               precision: str = 'auto', use_ema: bool = True) -> Model:
    """Load the shipped model (no path), a run folder's latest or given milestone, or a checkpoint or export file,
    on `device` ('auto': CUDA, then MPS, then CPU) in `precision` ('auto': bf16 on CPUs that have it, else fp32)."""
    if precision not in PRECISIONS:
        raise UserError(f'precision {precision!r} is not one of {", ".join(PRECISIONS)}')
    file = checkpoint_path(path, milestone=milestone)
    torch_device = pick_device(device)
    if precision == 'fp16' and torch_device.type != 'cuda':
        raise UserError('precision fp16 needs CUDA; use bf16 or fp32 on this device')
    chosen = default_precision(torch_device) if precision == 'auto' else precision
    diffusion, config, info = load_checkpoint_model(file, use_ema=use_ema, device=torch_device)
    prepare_for_inference(diffusion, chosen)
    return Model(diffusion=diffusion, config=config, path=file, precision=chosen, info=info)


def sample(model: Model, *, strategy: str = 'ddim', steps: int | None = 50, eta: float = 0.0, n: int = 16,
           seed: int = 0, batch_size: int | None = None, digits: list[int] | None = None,
           guidance_scale: float = 1.0) -> torch.Tensor:
    """n images in [0, 1], shape (n, 1, H, W), on the CPU. Image i starts from the same x_T for every sampler
    (seeded by `seed`); DDPM always runs all T steps. A class-conditional model draws `digits` (default all ten) in
    equal numbers, in blocks of one digit, with classifier-free guidance eps_u + W (eps_c - eps_u), W =
    guidance_scale (1: unguided)."""
    batch = default_batch_size(model.device, n) if batch_size is None else batch_size
    labels, guidance = conditioning(model.diffusion, n, digits=digits, guidance_scale=guidance_scale)
    return sample_diffusion(model.diffusion, strategy=strategy, num_samples=n, batch_size=batch, steps=steps,
                            eta=eta, seed=seed, labels=labels, guidance=guidance)


def save_grid(images: torch.Tensor, path: str | Path, *, record: dict | None = None) -> Path:
    """A square grid PNG of images in [0, 1], written atomically (with `record` stored inside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid_png(images, path, record)
    return path


def evaluate(images: torch.Tensor, *, raw_dir: str | None = None, data_root: str = './data', seed: int = 0,
             image_size: int | None = None) -> dict:
    """The sweep's scores of images in [0, 1] against the MNIST test split (FID with its 95 % interval, IS,
    confidence, class balance, precision/recall, near-copies); with no MNIST on disk, against the shipped test-split
    statistics (FID, IS, confidence, class balance). image_size: the size the model was trained at (default: the
    images' own)."""
    size = int(image_size or images.shape[-1])
    return cached_evaluator(raw_dir, data_root, seed, size).score(images)


@functools.lru_cache(maxsize=4)
def cached_evaluator(raw_dir: str | None, data_root: str, seed: int, image_size: int) -> Evaluator:
    return reference_evaluator(image_size=image_size, raw_dir=raw_dir, data_root=data_root, seed=seed).evaluator
