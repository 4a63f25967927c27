"""Everything about a results folder and the checkpoints in it: config.json, milestones model-N.pt, the loss
log, resume rules, the lock, safe loading of any checkpoint into a ready model, legacy detection, and export."""
import copy
import os
import re
import zipfile
from collections import namedtuple
from pathlib import Path

import torch

from .model import SCHEDULE_FUNCTIONS, arch_differences, build_diffusion, build_unet, list_if_seq
from .settings import FLAG_OF, MODEL_KEYS, ORIGINAL
from .utils import UserError, atomic_path, read_json, remove_stale_temporaries, warn, write_json

CONFIG_NAME = 'config.json'
LOSS_LOG = 'loss.csv'
MILESTONE_RE = re.compile(r'^model-(\d+)\.pt$')
WRAPPER_PREFIXES = ('module.', '_orig_mod.')  # DistributedDataParallel and torch.compile

Weights = namedtuple('Weights', 'checkpoint unet_state config')
Loaded = namedtuple('Loaded', 'diffusion config info')


# ---------------------------------------------------------------- config.json

def read_config(folder):
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    config = read_json(path)
    if not all(section in config for section in ('model', 'diffusion')):
        raise UserError(f'{path} has no model/diffusion settings; it was not written by train_ddpm_mnist.py')
    return config


def write_config(folder, config):
    write_json(Path(folder) / CONFIG_NAME, config)


def check_against_folder(config, folder):
    """Refuse to train into a folder whose config.json describes another model or milestone spacing."""
    existing = read_config(folder)
    if existing is None:
        return
    diffs = arch_differences(existing, config)
    if diffs:
        raise UserError(f'{folder}/config.json was written for another model ({"; ".join(diffs)}); '
                        'use a new --results_folder or the same settings')
    if existing['training'].get('save_and_sample_every') != config['training']['save_and_sample_every']:
        raise UserError(f'{folder} was trained with --save_and_sample_every '
                        f'{existing["training"]["save_and_sample_every"]}; keep it so milestone numbers stay '
                        'consistent')


# ---------------------------------------------------------------- milestones and resuming

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


def prepare_folder(folder, config):
    """Under the lock: check the folder still fits this run, clear killed runs' temporaries, write config.json."""
    check_against_folder(config, folder)  # again under the lock: another run may have started meanwhile
    remove_stale_temporaries(folder)
    write_config(folder, config)


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


# ---------------------------------------------------------------- reading and writing checkpoint files

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


# ---------------------------------------------------------------- what a checkpoint's tensors reveal

def infer_unet_arch(unet_state):
    """Unet dim, dim_mults and channels from the shapes of a Unet state dict."""
    try:
        dim, channels = unet_state['init_conv.weight'].shape[:2]
        levels = sorted({int(k.split('.')[1]) for k in unet_state if k.startswith('downs.')})
        mults = []
        for level in levels:
            out = unet_state.get(f'downs.{level}.3.1.weight', unet_state.get(f'downs.{level}.3.weight'))
            mults.append(int(out.shape[0]) // int(dim))
    except (KeyError, AttributeError, IndexError) as err:
        raise UserError(f'the weights are not a denoising-diffusion-pytorch Unet (missing {err})') from None
    return dict(dim=int(dim), dim_mults=mults, channels=int(channels))


def detect_schedule(betas):
    """Name of the library beta schedule that produced `betas`, or None."""
    betas = betas.double().cpu()
    for name, fn in SCHEDULE_FUNCTIONS.items():
        if torch.allclose(fn(len(betas)).double(), betas, rtol=1e-4, atol=1e-6):
            return name
    return None


def detect_objective(loss_weight, alphas_cumprod):
    """Objective from the library's loss_weight buffer: 1 for pred_noise, snr for pred_x0, snr/(snr+1) for pred_v."""
    ac = alphas_cumprod.double().cpu()
    snr = ac / (1 - ac)
    for gamma in (None, 5.0):  # plain, or min-SNR weighting with the library's default gamma
        clipped = snr if gamma is None else snr.clamp(max=gamma)
        candidates = dict(pred_noise=clipped / snr, pred_x0=clipped, pred_v=clipped / (snr + 1))
        for name, weight in candidates.items():
            if torch.allclose(weight, loss_weight.double().cpu(), rtol=1e-3, atol=1e-6):
                return name
    return None


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


def check_agrees(path, ckpt, config, what):
    """Refuse a checkpoint whose weights or buffers say another model than `config` (named by `what`)."""
    state = unet_weights(ckpt, path, use_ema='unet' in ckpt or not ckpt.get('model'))
    diffs = arch_differences({'model': infer_unet_arch(state), 'diffusion': config['diffusion']}, config)
    diffs += buffer_conflicts(ckpt, config)
    if diffs:
        raise UserError(f'{path} holds another model than {what} ({"; ".join(diffs)}); use a new --results_folder, '
                        'or settings that match the checkpoint')


def check_resumable(folder, milestone, config):
    """The milestone a run resumes from must hold this run's model (weights and diffusion buffers)."""
    path = milestone_path(folder, milestone)
    check_agrees(path, load_checkpoint(path), config, 'the settings of this run')


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
                raise UserError(f'--{FLAG_OF[key]} {value} contradicts the checkpoint {path.name}, which has '
                                f'{key}={ours}; drop the flag')
    diffs = arch_differences(config, {'model': infer_unet_arch(unet_state), 'diffusion': config['diffusion']})
    if diffs:
        raise UserError(f'{path} holds weights of another architecture than its config says ({"; ".join(diffs)})')
    conflicts = [] if legacy else buffer_conflicts(ckpt, config)
    if conflicts:
        raise UserError(f'{path}: its saved diffusion buffers contradict its config ({"; ".join(conflicts)}); '
                        'the config is wrong, do not trust it')
    return config


def read_weights(path, overrides=None, use_ema=True):
    """(checkpoint, Unet state dict, config) of any supported checkpoint, checked against each other."""
    ckpt = load_checkpoint(path)
    state = unet_weights(ckpt, path, use_ema=use_ema)
    return Weights(ckpt, state, resolve_config(path, ckpt, state, overrides or {}))


def load_model(path, overrides=None, use_ema=True, device='cpu'):
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
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f'{path}: weights contain NaN or infinite values (e.g. {bad[0]}); the training run diverged; '
                        'use an earlier milestone')
    if not use_ema:
        warn('sampling the ONLINE weights, not the EMA weights the project trains for; samples will be worse')
    diffusion = build_diffusion(config, unet).to(device).eval()
    info = dict(checkpoint=str(path), weights='ema' if use_ema else 'online', step=ckpt.get('step'),
                detected=config.get('detected'))
    return Loaded(diffusion, config, info)


# ---------------------------------------------------------------- export (what the repo ships)

def export_ema(checkpoint, output_stem):
    """Write OUTPUT.safetensors (EMA Unet weights) and OUTPUT.json (config and provenance)."""
    from safetensors.torch import save_file
    ckpt, state, config = read_weights(checkpoint)
    state = {k: v.contiguous() for k, v in state.items()}
    config = without_absolute_paths(copy.deepcopy(config))
    config['exported_from'] = dict(checkpoint=Path(checkpoint).name, step=ckpt.get('step'), weights='ema')
    if 'training' in config:
        config['provenance'] = provenance(ckpt, config)
    output_stem = Path(output_stem)
    output_stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_stem.with_suffix('.safetensors')) as tmp:
        save_file(state, str(tmp))
    write_json(output_stem.with_suffix('.json'), config)
    return output_stem.with_suffix('.safetensors')


def provenance(ckpt, config):
    """What the weights came from, in words a reader can check: data, steps, images seen, time, machine."""
    t, data = config['training'], config.get('data', {})
    step = ckpt.get('step')
    return dict(training_set=data.get('source'), training_images=data.get('num_images'), steps=step,
                images_seen=step * t['train_batch_size'] * t['gradient_accumulate_every'] if step else None,
                wall_seconds=ckpt.get('wall_seconds'), machines=ckpt.get('machines'),
                versions=config.get('versions'), command=config.get('command'))


def without_absolute_paths(value):
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
