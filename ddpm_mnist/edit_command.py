"""The editing command (edit_digits.py): check every input, then edit, then write the grids with their records.
Nothing is written before the inputs, mask and settings are valid."""
from pathlib import Path

import torch

from . import editing
from .inference import open_model
from .sampling import initial_noise
from .utils import UserError, atomic_path, ensure_writable_dir, save_grid, shown_path, write_json


def run_edit(*, operation, checkpoint=None, milestone=None, results_folder=None, device='auto', precision='auto',
             seed=0, batch_size=100, **settings):
    """One edit of edit_digits.py; returns the record written beside its grid."""
    opened = open_model(checkpoint=checkpoint, milestone=milestone, results_folder=results_folder, device=device,
                        precision=precision)
    diffusion = opened['loaded'].diffusion
    size = diffusion.image_size[0]
    prepared = PREPARE[operation](size=size, **settings)  # every input read and checked before anything is written
    result = RUN[operation](diffusion, prepared, seed=seed, batch_size=batch_size, **settings)
    out_dir = ensure_writable_dir(Path(opened['results_folder']) / opened['run_name'] / 'edit')
    record = {'operation': operation, **{k: v for k, v in settings.items() if k != 'input'},
              'inputs': [shown_path(p) for p in settings.get('input') or []], 'seed': seed,
              'checkpoint': shown_path(opened['path']), 'precision': opened['precision'], **result.pop('record', {})}
    name = result.pop('name')
    save_grid(result['images'], out_dir / f'{name}.png', record, nrow=result.get('nrow'))
    if 'side_by_side' in result:
        save_grid(result['side_by_side'], out_dir / f'{name}_side_by_side.png', record, nrow=result['columns'])
    if result.get('gif') is not None:
        write_gif(result['images'], out_dir / f'{name}.gif')
    write_json(out_dir / f'{name}.json', record)
    print(f'saved {out_dir / name}.png' + (' (and _side_by_side.png)' if 'side_by_side' in result else ''))
    return record


# ---------------------------------------------------------------- reading and checking the inputs

def prepare_images(*, size, input=None, **_):
    converted = editing.load_inputs(input, size)
    for note in converted.notes:
        print(f'input {note}')
    return dict(images=converted.images, input_size=converted.size)


def prepare_inpaint(*, size, input, mask, **_):
    prepared = prepare_images(size=size, input=input)
    prepared['mask'] = editing.load_mask(mask, input_size=prepared['input_size'], size=size)
    return prepared


def prepare_interpolate(*, size, input=None, seeds=None, **_):
    return prepare_images(size=size, input=input) if input else dict(seeds=seeds)


PREPARE = {'inpaint': prepare_inpaint, 'sdedit': prepare_images, 'invert': prepare_images,
           'interpolate': prepare_interpolate}


# ---------------------------------------------------------------- the edits

def run_inpaint(diffusion, prepared, *, seed, batch_size, steps=None, eta=None, jump_length=10, resamples=10, **_):
    eta = (1.0 if steps is None else 0.0) if eta is None else eta
    images, nfe = editing.inpaint(diffusion, prepared['images'], prepared['mask'], steps=steps, eta=eta,
                                  jump_length=jump_length, resamples=resamples, seed=seed, batch_size=batch_size)
    mask = prepared['mask'].expand_as(images)
    shown_mask = prepared['images'] * (1 - mask) + 0.5 * mask  # the kept pixels, the region to fill in grey
    chain = 'ddpm' if steps is None else f'ddim{steps}_eta{eta}'
    return dict(images=images, side_by_side=interleave(prepared['images'], shown_mask, images), columns=3,
                name=f'inpaint_{chain}_j{jump_length}_r{resamples}', record=dict(nfe_per_image=nfe, eta=eta))


def run_sdedit(diffusion, prepared, *, seed, batch_size, strength, strategy='ddim', steps=50, eta=0.0, **_):
    images, nfe = editing.sdedit(diffusion, prepared['images'], strength=strength, strategy=strategy, steps=steps,
                                 eta=eta, seed=seed, batch_size=batch_size)
    return dict(images=images, side_by_side=interleave(prepared['images'], images), columns=2,
                name=f'sdedit_{strategy}{steps}_strength{strength}', record=dict(nfe_per_image=nfe))


def run_invert(diffusion, prepared, *, seed, batch_size, steps=50, **_):
    inversion = editing.invert(diffusion, prepared['images'], steps=steps, batch_size=batch_size)
    for i, (mse, psnr) in enumerate(zip(inversion.mse.tolist(), inversion.psnr.tolist())):
        print(f'input {i}: round trip with K = {steps}: MSE {mse:.2e}, PSNR {psnr:.1f} dB')
    print(f'mean PSNR {inversion.psnr.mean():.1f} dB over {len(inversion.psnr)} input(s)')
    return dict(images=inversion.reconstruction, side_by_side=interleave(prepared['images'], inversion.reconstruction),
                columns=2,
                name=f'invert_ddim{steps}', record=dict(mse=inversion.mse.tolist(), psnr=inversion.psnr.tolist()))


def run_interpolate(diffusion, prepared, *, seed, batch_size, frames=8, steps=50, gif=False, seeds=None, **_):
    if seeds is not None:
        ends = [initial_noise(1, diffusion.channels, diffusion.image_size[0], s) for s in seeds]
        name = f'interpolate_seeds{seeds[0]}-{seeds[1]}_ddim{steps}'
    else:
        ends = editing.ddim_invert(diffusion, prepared['images'], steps=steps).split(1)
        name = f'interpolate_inputs_ddim{steps}'
    images = editing.interpolate(diffusion, ends[0].to(diffusion.device), ends[1].to(diffusion.device),
                                 frames=frames, steps=steps)
    return dict(images=images, name=f'{name}_{frames}frames', gif=True if gif else None, nrow=frames,
                record=dict(frames=frames))


RUN = {'inpaint': run_inpaint, 'sdedit': run_sdedit, 'invert': run_invert, 'interpolate': run_interpolate}


def interleave(*columns):
    """Images of several grids side by side per input: input 0's columns, then input 1's, ..."""
    return torch.stack(columns, dim=1).flatten(0, 1)


def write_gif(images, path):
    from PIL import Image
    frames = [Image.fromarray(image[0].mul(255).round().byte().numpy(), mode='L').resize((112, 112), Image.NEAREST)
              for image in images]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format='gif', save_all=True, append_images=frames[1:], duration=120, loop=0)
    if not path.is_file():
        raise UserError(f'could not write {path}')
