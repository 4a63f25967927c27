"""Checkpoint I/O: milestones, safe loading, EMA extraction, and turning any checkpoint into a ready model."""
import copy
import re
import zipfile
from pathlib import Path

import torch

from .model import (MODEL_KEYS, ORIGINAL, arch_differences, build_diffusion, build_unet, detect_objective,
                    detect_schedule, infer_unet_arch, list_if_seq, read_config)
from .utils import UserError, atomic_path, read_json, warn

MILESTONE_RE = re.compile(r'^model-(\d+)\.pt$')
WRAPPER_PREFIXES = ('module.', '_orig_mod.')  # DistributedDataParallel and torch.compile


def milestones(folder):
    """Milestone numbers of the model-N.pt files in a results folder, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := MILESTONE_RE.match(p.name)))


def milestone_path(folder, milestone):
    return Path(folder) / f'model-{milestone}.pt'


def find_milestone(folder, milestone):
    path = milestone_path(folder, milestone)
    if not path.is_file():
        found = milestones(folder)
        have = f'it has milestones {", ".join(map(str, found))}' if found else 'it has no model-N.pt files'
        raise UserError(f'milestone {milestone} not found in {folder} ({have})')
    return path


def save_checkpoint(data, path):
    """torch.save through a temporary file and a rename: a crash never leaves a half-written model-N.pt."""
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path, map_location='cpu'):
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


def load_weights_file(path, what='weights file', map_location='cpu'):
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


def load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return {'unet': load_file(path)}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f'{path} is not a readable safetensors file ({err})') from None


def strip_prefixes(state, prefix):
    """Keys under `prefix`, with the prefix and any wrapper prefixes (module., _orig_mod.) removed."""
    out = {}
    for key, value in state.items():
        for wrapper in WRAPPER_PREFIXES:
            key = key.replace(wrapper, '')
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
    return out


def unet_weights(ckpt, path, use_ema=True):
    """The Unet state dict of a checkpoint: EMA weights by default, online weights only if asked."""
    if 'unet' in ckpt:  # shipped safetensors: EMA Unet weights only
        if not use_ema:
            raise UserError(f'{path} holds EMA weights only; drop --use_online_weights')
        return ckpt['unet']
    if use_ema:
        if not isinstance(ckpt.get('ema'), dict):
            raise UserError(f'{path} has no EMA weights ("ema" missing); pass --use_online_weights to sample '
                            'its online weights')
        state = strip_prefixes(ckpt['ema'], 'ema_model.model.')
    else:
        state = strip_prefixes(ckpt.get('model', {}), 'model.')
    if not state:
        raise UserError(f'{path} holds no Unet weights under the expected keys '
                        '("ema" -> ema_model.model.*, "model" -> model.*)')
    return state


def diffusion_buffers(ckpt):
    """The GaussianDiffusion buffers (betas, loss_weight, ...) saved with a Trainer checkpoint."""
    for source, prefix in (('model', ''), ('ema', 'ema_model.')):
        state = strip_prefixes(ckpt.get(source) or {}, prefix)
        if 'betas' in state:
            return state
    return {}


def detect_legacy_config(ckpt, unet_state):
    """Config for a checkpoint without one: the original's defaults, corrected by what the file reveals."""
    config = copy.deepcopy(ORIGINAL)
    config['model'].update(infer_unet_arch(unet_state))
    found = detected_from_buffers(ckpt)
    config['diffusion'].update(found)
    config['detected'] = found
    return config


def buffer_conflicts(ckpt, config):
    """Where the diffusion buffers saved in a checkpoint (betas, loss_weight) contradict a config."""
    found = detected_from_buffers(ckpt)
    return [f'{key}: {value} in the weights vs {config["diffusion"].get(key)} in the config'
            for key, value in found.items() if value != config['diffusion'].get(key)]


def detected_from_buffers(ckpt):
    buffers, found = diffusion_buffers(ckpt), {}
    if 'betas' in buffers:
        found['timesteps'] = len(buffers['betas'])
        schedule = detect_schedule(buffers['betas'])
        if schedule:
            found['beta_schedule'] = schedule
        if 'loss_weight' in buffers and 'alphas_cumprod' in buffers:
            objective = detect_objective(buffers['loss_weight'], buffers['alphas_cumprod'])
            if objective:
                found['objective'] = objective
    return found


def check_agrees(path, ckpt, config, what):
    """Refuse a checkpoint whose weights or buffers say another model than `config` (named by `what`)."""
    state = unet_weights(ckpt, path, use_ema='unet' in ckpt or not ckpt.get('model'))
    diffs = arch_differences({'model': infer_unet_arch(state), 'diffusion': config['diffusion']}, config)
    diffs += buffer_conflicts(ckpt, config)
    if diffs:
        raise UserError(f'{path} holds another model than {what} ({"; ".join(diffs)}); use a new --results_folder, '
                        'or settings that match the checkpoint')


def resolve_config(path, ckpt, unet_state, overrides):
    """Settings for a checkpoint: its config (embedded, sidecar JSON or config.json beside it), else detected.

    Explicit flags (`overrides`) may only repeat what the checkpoint says; a contradiction is an error.
    For a checkpoint without a config, flags also fill in what the file cannot reveal (e.g. image_size).
    """
    path = Path(path)
    sidecar = path.with_suffix('.json')
    if path.suffix == '.safetensors' and sidecar.is_file():
        config = read_json(sidecar)
    else:
        config = ckpt.get('config') or read_config(path.parent)
    legacy = config is None
    if legacy:
        config = detect_legacy_config(ckpt, unet_state)
    known = {'model': set(MODEL_KEYS), 'diffusion': set(config['detected'])} if legacy else None
    for section, values in overrides.items():
        for key, value in values.items():
            ours = config[section].get(key)
            if legacy and key not in known[section]:
                config[section][key] = value
            elif list_if_seq(value) != list_if_seq(ours):
                flag = {'dim': 'unet_dim', 'timesteps': 'train_timesteps'}.get(key, key)
                raise UserError(f'--{flag} {value} contradicts the checkpoint {path.name}, which has {key}={ours}; '
                                'drop the flag')
    diffs = arch_differences(config, {'model': infer_unet_arch(unet_state), 'diffusion': config['diffusion']})
    if diffs:
        raise UserError(f'{path} holds weights of another architecture than its config says ({"; ".join(diffs)})')
    conflicts = [] if legacy else buffer_conflicts(ckpt, config)
    if conflicts:
        raise UserError(f'{path}: its saved diffusion buffers contradict its config ({"; ".join(conflicts)}); '
                        'the config is wrong, do not trust it')
    return config


def load_model(path, overrides=None, use_ema=True, device='cpu'):
    """Load any supported checkpoint into a GaussianDiffusion ready for sampling. Returns (diffusion, config, info)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    state = unet_weights(ckpt, path, use_ema=use_ema)
    config = resolve_config(path, ckpt, state, overrides or {})
    unet = build_unet(config['model'])
    try:
        unet.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(f'{path}: weights do not fit the model ({first[1].strip() if len(first) > 1 else first[0]})'
                        ) from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f'{path}: weights contain NaN or infinite values (e.g. {bad[0]}); the training run diverged; '
                        'use an earlier milestone')
    if not use_ema:
        warn('sampling the ONLINE weights, not the EMA weights the project trains for; samples will be worse')
    diffusion = build_diffusion(config, unet).to(device).eval()
    info = dict(checkpoint=str(path), weights='ema' if use_ema else 'online', step=ckpt.get('step'),
                detected=config.get('detected'))
    return diffusion, config, info
