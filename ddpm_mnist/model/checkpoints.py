"""Checkpoint and export I/O: safe loading of any checkpoint into a ready model, saving milestones, the weights a
run continues from (--init_from), the shipped export and the provenance it carries."""
from __future__ import annotations

import copy
import json
import zipfile
from collections import namedtuple
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddpm_mnist.model.config import check_agrees, detected_from_buffers, resolve_config, strip_prefixes, unet_weights
from ddpm_mnist.model.network import GROWABLE, arch_differences, arch_of, build_diffusion, build_unet
from ddpm_mnist.training.run_folder import milestone_path
from ddpm_mnist.utils import (BadValue, Checkpoint, Config, DiskFull, PathLike, UserError, atomic_path, file_digest,
                              strict, tensor_bytes, warn)

Weights = namedtuple('Weights', 'checkpoint unet_state config')
Loaded = namedtuple('Loaded', 'diffusion config info')
Parent = namedtuple('Parent', 'online ema record')


def save_checkpoint(data: Checkpoint, path: PathLike) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves a half-written model-N.pt."""
    with atomic_path(path, needed=tensor_bytes(data)) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: PathLike, map_location: str = 'cpu') -> Checkpoint:
    """Load a .pt checkpoint without unpickling code, with one-line errors for every way it can be bad."""
    path = Path(path)
    if path.suffix == '.safetensors':
        if not path.is_file():
            raise UserError(f'checkpoint {path} does not exist')
        return load_safetensors(path)
    data = load_weights_file(path, 'checkpoint', map_location)
    if not isinstance(data, dict) or not ({'model', 'ema'} & set(data)):
        raise UserError(f'{path} is not a training checkpoint (expected the keys "model" and "ema" of a '
                        'denoising-diffusion-pytorch Trainer)')
    return data


def load_weights_file(path: PathLike, what: str = 'weights file', map_location: str = 'cpu') -> Any:
    """torch.load with weights_only=True (a file can never run code), and a one-line error naming the file
    and what is wrong with it for every way it can be bad: missing, empty, truncated, hostile, not PyTorch."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'{what} {path} does not exist')
    if path.stat().st_size == 0:
        raise UserError(f'{what} {path} is empty (0 bytes); it was not saved completely')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except zipfile.BadZipFile:
        raise UserError(f'{what} {path} is truncated or damaged; use an earlier milestone or download it again'
                        ) from None
    except Exception as err:  # torch raises many types for damaged or hostile files
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if 'unsupported global' in str(err).lower():
            raise UserError(f'{what} {path} contains Python objects other than weights; refusing to unpickle it, '
                            'as loading it could run code') from None
        raise UserError(f'{what} {path} cannot be read ({detail}); it is truncated, damaged or not a PyTorch '
                        'file') from None


def load_safetensors(path: PathLike) -> Checkpoint:
    """An exported .safetensors as {'unet': its EMA Unet weights}."""
    try:
        return {'unet': load_file(path)}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f'{path} is not a readable safetensors file ({err})') from None


def read_weights(path: PathLike, overrides: Config | None = None, use_ema: bool = True) -> Weights:
    """(checkpoint, Unet state dict, config) of any supported checkpoint, checked against each other."""
    ckpt = load_checkpoint(path)
    state = unet_weights(ckpt, path, use_ema=use_ema)
    check_finite(path, state)
    return Weights(ckpt, state, resolve_config(path, ckpt, state, overrides or {}))


def check_finite(path: PathLike, state: dict[str, torch.Tensor]) -> None:
    """Weights with NaN or infinite values are refused wherever they enter (sampling, --init_from, export)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f'{path}: weights contain NaN or infinite values (e.g. {bad[0]}); the training run diverged; '
                        'use an earlier milestone')


PRECISION_MAX = {'fp16': 65504.0}  # bf16 has float32's range; fp16's largest finite value is 65504


def check_fits_precision(path: PathLike, tensors: Iterable[torch.Tensor], precision: str) -> None:
    """Weights beyond the largest value of the precision they will be cast to would overflow to infinity: refused
    in one line naming the file, the value and what to use instead."""
    top = PRECISION_MAX.get(precision)
    values = [t.detach().abs().max() for t in tensors if t.is_floating_point() and t.numel()]
    largest = float(max(values)) if values and top is not None else 0.0
    if top is not None and largest > top:
        raise BadValue(f'{path}: weights reach {largest:.3g}, beyond the largest {precision} value ({top:g}); cast '
                       f'to {precision} they would overflow to infinity: use precision fp32 or bf16')


def load_model(path: PathLike, overrides: Config | None = None, use_ema: bool = True,
               device: str | torch.device = 'cpu') -> Loaded:
    """Any supported checkpoint as a GaussianDiffusion ready for sampling: Loaded(diffusion, config, info)."""
    path = Path(path)
    ckpt, state, config = read_weights(path, overrides, use_ema)
    unet = build_unet(config['model'])
    try:
        unet.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(f'{path}: weights do not fit the model ({first[1].strip() if len(first) > 1 else first[0]})'
                        ) from None
    if not use_ema:
        warn('sampling the ONLINE weights, not the EMA weights the project trains for; samples will be worse')
    diffusion = build_diffusion(config, unet).to(device).eval()
    info = dict(checkpoint=str(path), weights='ema' if use_ema else 'online', step=ckpt.get('step'),
                detected=config.get('detected'), images_seen=images_seen(ckpt, config),
                wall_seconds=ckpt.get('wall_seconds'))
    return Loaded(diffusion, config, info)


def read_parent(path: PathLike, config: Config) -> Parent:
    """The weights a run starts from (--init_from: shipped safetensors, an export or any milestone), refused in one
    line when they are another model than the run's; Parent(online, ema Unet state dicts, record for config.json)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'--init_from {path}: no such file; give a model-N.pt milestone or an exported .safetensors')
    ckpt, ema, parent_config = read_weights(path)
    diffs = arch_differences(parent_config, config) + [
        f'{key}: {value} in the weights vs {config["diffusion"].get(key)} in this run'
        for key, value in detected_from_buffers(ckpt).items() if value != config['diffusion'].get(key)]
    ours, theirs = arch_of(config), arch_of(parent_config)
    grown = [f'{key}: {old} vs {new}' for key, (old, new) in GROWABLE.items() if (theirs[key], ours[key]) == (old, new)]
    diffs = [d for d in diffs if d not in grown]  # the same wording as arch_differences
    if diffs:
        raise UserError(f'--init_from {path.name} holds another model than this run ({"; ".join(diffs)}); '
                        'train with its settings (see its .json or config) or start from scratch')
    online = ema if 'unet' in ckpt else unet_weights(ckpt, path, use_ema=False)
    check_finite(f'--init_from {path}', online)
    parent_provenance = (parent_config.get('provenance') if 'unet' in ckpt
                         else provenance(ckpt, parent_config) if 'training' in parent_config else None)
    record = dict(file=path.name, sha256_16=file_digest(path),
                  weights='ema only' if 'unet' in ckpt else 'online and ema',
                  provenance=without_absolute_paths(parent_provenance), **(dict(grown=grown) if grown else {}))
    return Parent(online, ema, record)


def export_ema(checkpoint: PathLike, output_stem: PathLike, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write OUTPUT.safetensors (EMA Unet weights, floating-point ones stored as `dtype`) and OUTPUT.json (config
    and provenance). Loading casts them back into the fp32 modules (load_state_dict copies with a cast)."""
    ckpt, state, config = read_weights(checkpoint)
    if dtype == torch.float16:
        check_fits_precision(checkpoint, state.values(), 'fp16')
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    config = without_absolute_paths(copy.deepcopy(config))
    if 'unet' not in ckpt:  # an export of an export keeps the record it carries: its steps are not in the file
        config['exported_from'] = dict(checkpoint=Path(checkpoint).name, step=ckpt.get('step'), weights='ema')
        if 'training' in config:
            config['provenance'] = provenance(ckpt, config)
    if dtype != torch.float32:
        config['weights_dtype'] = str(dtype).removeprefix('torch.')
    output_stem = Path(output_stem)
    weights, record = output_stem.with_suffix('.safetensors'), output_stem.with_suffix('.json')
    try:
        output_stem.parent.mkdir(parents=True, exist_ok=True)
        # both written before either is renamed into place: a full disk leaves the old pair as it was; the record
        # names its weights' digest, so a kill between the two renames is found when the pair is next loaded
        with atomic_path(weights, needed=tensor_bytes(state)) as weights_tmp, atomic_path(record) as record_tmp:
            save_file(state, str(weights_tmp))
            config['weights_sha256_16'] = file_digest(weights_tmp)
            record_tmp.write_text(json.dumps(strict(config), indent=2, allow_nan=False) + '\n')
    except DiskFull as err:
        raise DiskFull(f'{err}; {weights.name} and {record.name} there are unchanged') from None
    return weights


def images_seen(ckpt: Checkpoint, config: Config) -> int | None:
    """Training images a checkpoint's run has seen: counted by the Trainer since it was written (right across
    resumes on another number of processes), else step x batch x accumulation x processes."""
    if ckpt.get('images_seen') is not None:
        return int(ckpt['images_seen'])
    t, step = config.get('training') or {}, ckpt.get('step')
    if not step or 'train_batch_size' not in t:
        return None
    return step * t['train_batch_size'] * t['gradient_accumulate_every'] * t.get('num_processes', 1)


SEGMENT_KEYS = ('training_set', 'training_images', 'steps', 'images_seen', 'wall_seconds', 'machines', 'command')


def provenance(ckpt: Checkpoint, config: Config) -> dict[str, Any]:
    """What the weights came from, in words a reader can check: data, steps, images seen, time, machine, and
    (for a run continued with --init_from) every earlier run: `segments`, oldest first, and their totals."""
    data = config.get('data', {})
    own = dict(training_set=data.get('source'), training_images=data.get('num_images'), steps=ckpt.get('step'),
               images_seen=images_seen(ckpt, config), wall_seconds=ckpt.get('wall_seconds'),
               machines=ckpt.get('machines'), versions=config.get('versions'), command=config.get('command'))
    parent = (config.get('init_from') or {}).get('provenance')
    segments = [*segments_of(parent), {k: own[k] for k in SEGMENT_KEYS}]
    return dict(own, segments=segments,
                total_images_seen=sum(seg.get('images_seen') or 0 for seg in segments),
                total_wall_seconds=round(sum(seg.get('wall_seconds') or 0 for seg in segments), 1))


def segments_of(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The training runs behind a provenance record, oldest first (records before segments: one run)."""
    if not record:
        return []
    return list(record.get('segments') or [{k: record.get(k) for k in SEGMENT_KEYS}])


def without_absolute_paths(value: Any) -> Any:
    """The build machine's absolute paths mean nothing elsewhere: keep only the last component."""
    if isinstance(value, dict):
        return {k: without_absolute_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_absolute_paths(v) for v in value]
    if isinstance(value, str) and value.startswith('/'):
        return Path(value).name
    if isinstance(value, str) and ' /' in value:  # e.g. 'IDX files in /tmp/x'
        return ' '.join(Path(word).name if word.startswith('/') else word for word in value.split(' '))
    return value


def check_resumable(folder: PathLike, milestone: int, config: Config) -> None:
    """The milestone a run resumes from must hold this run's model (weights and diffusion buffers), all finite;
    checked before the run takes the folder's lock or writes anything."""
    path = milestone_path(folder, milestone)
    ckpt = load_checkpoint(path)
    check_agrees(path, ckpt, config, 'the settings of this run')
    online = strip_prefixes(ckpt.get('model') or {}, '')
    broken = [name for name, p in online.items() if p.is_floating_point() and not p.isfinite().all()]
    if broken:
        raise UserError(f'{path.name} holds NaN or infinite weights (e.g. {broken[0]}); the run diverged before it '
                        'was saved. Copy an earlier milestone to a new --results_folder and resume there, with a '
                        'lower --train_lr')
