"""The editing command (edit_digits.py): check every input, then edit, then write the grids with their records.
Nothing is written before the inputs, mask and settings are valid."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ddpm_mnist.model.conditional import GuidedUnet
from ddpm_mnist.sampling import editing
from ddpm_mnist.sampling.images import load_inputs, load_mask, save_grid
from ddpm_mnist.cli.inference import open_model
from ddpm_mnist.sampling.loop import initial_noise
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.utils import (Diffusion, FolderLock, PathLike, UserError, atomic_path, ensure_writable_dir,
                              remove_stale_temporaries, shown_path, write_json)


def run_edit(*, operation: str, checkpoint: PathLike | None = None, milestone: int | None = None,
             results_folder: PathLike | None = None, device: str = 'auto', precision: str = 'auto', seed: int = 0,
             batch_size: int = 100, conditional: bool = False, digits: Sequence[int] | None = None,
             **settings: Any) -> dict[str, Any]:
    """One edit of edit_digits.py; returns the record written beside its grid. A class-conditional model edits
    conditioned on `digits` (one for every input, or one per input) or, without them, unconditioned."""
    opened = open_model(checkpoint=checkpoint, milestone=milestone, results_folder=results_folder, device=device,
                        precision=precision, conditional=conditional)
    diffusion = opened.loaded.diffusion
    if isinstance(diffusion.model, GuidedUnet):
        diffusion.model.condition(None)  # a class-conditional model edits unconditioned (its null label)
    size = diffusion.image_size[0]
    # every input read and checked before anything is written
    prepared = PREPARE[operation](size=size, channels=diffusion.channels, **settings)
    count = 1 if operation == 'interpolate' else len(prepared['images'])
    prepared['labels'] = edit_labels(diffusion, digits, count)
    result = RUN[operation](diffusion, prepared, seed=seed, batch_size=batch_size, **settings)
    if digits is not None:  # conditioned edits are named and recorded apart from unconditioned ones
        settings['digits'] = list(digits)
        result['name'] += '_digits' + '-'.join(map(str, digits))
    out_dir = ensure_writable_dir(Path(opened.results_folder) / opened.run_name / 'edit')
    with FolderLock(out_dir, 'editing'):  # one writer at a time: a grid and its record always belong together
        remove_stale_temporaries(out_dir)  # what a killed earlier run left behind
        record = {'operation': operation, **{k: v for k, v in settings.items() if k != 'input'},
                  'inputs': [shown_path(p) for p in settings.get('input') or []], 'seed': seed,
                  'checkpoint': shown_path(opened.path), 'precision': opened.precision, **result.pop('record', {})}
        name = result.pop('name')
        (out_dir / f'{name}.json').unlink(missing_ok=True)  # a kill before the new record lands leaves no stale one
        save_grid(result['images'], out_dir / f'{name}.png', record, nrow=result.get('nrow'))
        if 'side_by_side' in result:
            save_grid(result['side_by_side'], out_dir / f'{name}_side_by_side.png', record, nrow=result['columns'])
        if result.get('gif') is not None:
            write_gif(result['images'], out_dir / f'{name}.gif')
        write_json(out_dir / f'{name}.json', record)
    print(f'saved {out_dir / name}.png' + (' (and _side_by_side.png)' if 'side_by_side' in result else ''))
    return record


# ---------------------------------------------------------------- reading and checking the inputs

def prepare_images(*, size: int, channels: int = 1, input: Sequence[PathLike] | None = None,
                   **_: Any) -> dict[str, Any]:
    """The input images converted to the model's size and channels (each conversion printed), with their own
    size."""
    converted = load_inputs(input, size, channels)
    for note in converted.notes:
        print(f'input {note}')
    return dict(images=converted.images, input_size=converted.size)


def prepare_inpaint(*, size: int, channels: int = 1, input: Sequence[PathLike], mask: str,
                    **_: Any) -> dict[str, Any]:
    """The inputs and the mask (a named half or a PNG), checked against each other."""
    prepared = prepare_images(size=size, channels=channels, input=input)
    prepared['mask'] = load_mask(mask, input_size=prepared['input_size'], size=size)
    return prepared


def prepare_interpolate(*, size: int, channels: int = 1, input: Sequence[PathLike] | None = None,
                        seeds: Sequence[int] | None = None, **_: Any) -> dict[str, Any]:
    """The two end images, or the two seeds whose x_T are the ends."""
    return prepare_images(size=size, channels=channels, input=input) if input else dict(seeds=seeds)


def edit_labels(diffusion: Diffusion, digits: Sequence[int] | None, count: int) -> torch.Tensor | None:
    """The class of each of `count` inputs on a class-conditional model (--digits: one for all, or one each);
    None edits unconditioned. An interpolation has one class for its whole path."""
    if digits is None:
        return None
    if not isinstance(diffusion.model, GuidedUnet):
        raise UserError('--digits needs a class-conditional model (--conditional for the shipped one); this one is '
                        'unconditional')
    if len(digits) not in (1, count):
        raise UserError(f'--digits gives {len(digits)} digits for {count} input(s); give one for all of them'
                        + (' or one per input' if count > 1 else ''))
    if max(digits) >= diffusion.model.num_classes:
        raise UserError(f'--digits {max(digits)} is not a class of this model: it has {diffusion.model.num_classes}')
    return torch.tensor(list(digits) * count if len(digits) == 1 else list(digits), dtype=torch.long)


PREPARE = {'inpaint': prepare_inpaint, 'sdedit': prepare_images, 'invert': prepare_images,
           'interpolate': prepare_interpolate}


# ---------------------------------------------------------------- the edits

def run_inpaint(diffusion: Diffusion, prepared: dict[str, Any], *, seed: int, batch_size: int, steps: int | None = None,
                eta: float | None = None, jump_length: int = 10, resamples: int = 10, **_: Any) -> dict[str, Any]:
    """RePaint on the DDPM chain (steps None, eta 1) or on DDIM steps (eta 0 unless given)."""
    eta = (1.0 if steps is None else 0.0) if eta is None else eta
    images, nfe = editing.inpaint(diffusion, prepared['images'], prepared['mask'], steps=steps, eta=eta,
                                  jump_length=jump_length, resamples=resamples, seed=seed, batch_size=batch_size,
                                  labels=prepared['labels'])
    mask = prepared['mask'].expand_as(images)
    shown_mask = prepared['images'] * (1 - mask) + 0.5 * mask  # the kept pixels, the region to fill in grey
    chain = 'ddpm' if steps is None else f'ddim{steps}_eta{eta}'
    return dict(images=images, side_by_side=interleave(prepared['images'], shown_mask, images), columns=3,
                name=f'inpaint_{chain}_j{jump_length}_r{resamples}', record=dict(nfe_per_image=nfe, eta=eta))


def run_sdedit(diffusion: Diffusion, prepared: dict[str, Any], *, seed: int, batch_size: int, strength: float,
               strategy: str = 'ddim', steps: int = 50, eta: float = 0.0, **_: Any) -> dict[str, Any]:
    """SDEdit: the inputs noised to `strength` of the chain, then denoised by a sampler of the registry."""
    settings = SamplerSettings.resolve(strategy, steps, eta, total_timesteps=diffusion.num_timesteps)
    images, nfe = editing.sdedit(diffusion, prepared['images'], strength=strength, settings=settings, seed=seed,
                                 batch_size=batch_size, labels=prepared['labels'])
    return dict(images=images, side_by_side=interleave(prepared['images'], images), columns=2,
                name=f'sdedit_{strategy}{steps}_strength{strength}', record=dict(nfe_per_image=nfe))


def run_invert(diffusion: Diffusion, prepared: dict[str, Any], *, seed: int, batch_size: int, steps: int = 50,
               **_: Any) -> dict[str, Any]:
    """DDIM inversion to x_T and back, printing each input's round-trip error."""
    inversion = editing.invert(diffusion, prepared['images'], steps=steps, batch_size=batch_size,
                               labels=prepared['labels'])
    for i, (mse, psnr) in enumerate(zip(inversion.mse.tolist(), inversion.psnr.tolist())):
        print(f'input {i}: round trip with K = {steps}: MSE {mse:.2e}, PSNR {psnr:.1f} dB')
    print(f'mean PSNR {inversion.psnr.mean():.1f} dB over {len(inversion.psnr)} input(s)')
    return dict(images=inversion.reconstruction, side_by_side=interleave(prepared['images'], inversion.reconstruction),
                columns=2,
                name=f'invert_ddim{steps}', record=dict(mse=inversion.mse.tolist(), psnr=inversion.psnr.tolist()))


def run_interpolate(diffusion: Diffusion, prepared: dict[str, Any], *, seed: int, batch_size: int, frames: int = 8,
                    steps: int = 50, gif: bool = False, seeds: Sequence[int] | None = None, **_: Any) -> dict[str, Any]:
    """Frames along the spherical path between two x_T (two seeds', or two inputs' inversions)."""
    label = None if prepared['labels'] is None else int(prepared['labels'][0])
    if seeds is not None:
        ends = [initial_noise(1, diffusion.channels, diffusion.image_size[0], s) for s in seeds]
        name = f'interpolate_seeds{seeds[0]}-{seeds[1]}_ddim{steps}'
    else:
        labels = None if label is None else torch.full((2,), label, dtype=torch.long)
        ends = editing.ddim_invert(diffusion, prepared['images'], steps=steps, labels=labels).split(1)
        name = f'interpolate_inputs_ddim{steps}'
    images = editing.interpolate(diffusion, ends[0].to(diffusion.device), ends[1].to(diffusion.device),
                                 frames=frames, steps=steps, label=label)
    return dict(images=images, name=f'{name}_{frames}frames', gif=True if gif else None, nrow=frames,
                record=dict(frames=frames))


RUN = {'inpaint': run_inpaint, 'sdedit': run_sdedit, 'invert': run_invert, 'interpolate': run_interpolate}


def interleave(*columns: torch.Tensor) -> torch.Tensor:
    """Images of several grids side by side per input: input 0's columns, then input 1's, ..."""
    return torch.stack(columns, dim=1).flatten(0, 1)


def write_gif(images: torch.Tensor, path: Path) -> None:
    """The frames as a looping GIF, each digit enlarged 4x."""
    from PIL import Image
    pixels = images.mul(255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    frames = [Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize((112, 112), Image.NEAREST)
              for image in pixels]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format='gif', save_all=True, append_images=frames[1:], duration=120, loop=0)
    if not path.is_file():
        raise UserError(f'could not write {path}')
