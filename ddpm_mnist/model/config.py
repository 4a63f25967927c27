"""What a checkpoint's tensors and files say about the model: its Unet weights and diffusion buffers, the
architecture, schedule and objective they reveal (legacy checkpoints without a config), and the config resolved and
checked against explicit flags."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ddpm_mnist.model.network import SCHEDULE_FUNCTIONS, arch_differences, list_if_seq
from ddpm_mnist.training.run_folder import read_config
from ddpm_mnist.settings import FLAG_OF, MODEL_KEYS, ORIGINAL
from ddpm_mnist.utils import Checkpoint, Config, PathLike, StateDict, UserError, file_digest, read_json

WRAPPER_PREFIXES = ('module.', '_orig_mod.')  # DistributedDataParallel and torch.compile


def strip_prefixes(state: StateDict, prefix: str) -> StateDict:
    """Keys under `prefix`, with the prefix and any wrapper prefixes (module., _orig_mod.) removed."""
    out = {}
    for key, value in state.items():
        for wrapper in WRAPPER_PREFIXES:
            key = key.replace(wrapper, '')
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
    return out


def unet_weights(ckpt: Checkpoint, path: PathLike, use_ema: bool = True) -> StateDict:
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


def diffusion_buffers(ckpt: Checkpoint) -> StateDict:
    """The GaussianDiffusion buffers (betas, loss_weight, ...) saved with a Trainer checkpoint."""
    for source, prefix in (('model', ''), ('ema', 'ema_model.')):
        state = strip_prefixes(ckpt.get(source) or {}, prefix)
        if 'betas' in state:
            return state
    return {}


def infer_unet_arch(unet_state: StateDict) -> dict[str, Any]:
    """Unet dim, dim_mults and channels from the shapes of a Unet state dict."""
    try:
        dim, inputs = unet_state['init_conv.weight'].shape[:2]
        self_condition = inputs == 2 * unet_state['final_conv.weight'].shape[0]  # x0 estimate and x_t, stacked
        channels = inputs // 2 if self_condition else inputs
        levels = sorted({int(k.split('.')[1]) for k in unet_state if k.startswith('downs.')})
        mults = []
        for level in levels:
            out = unet_state.get(f'downs.{level}.3.1.weight', unet_state.get(f'downs.{level}.3.weight'))
            mults.append(int(out.shape[0]) // int(dim))
    except (KeyError, AttributeError, IndexError) as err:
        raise UserError(f'the weights are not a denoising-diffusion-pytorch Unet (missing {err})') from None
    attention = 'library' if any(k.startswith('downs.0.2.') for k in unet_state) else 'lowest'
    classes = unet_state.get('classes_emb.weight')  # the library's conditional Unet: a label embedding
    return dict(dim=int(dim), dim_mults=mults, channels=int(channels), attention=attention,
                num_classes=int(classes.shape[0]) if classes is not None else None,
                self_condition=bool(self_condition))


def detect_schedule(betas: torch.Tensor) -> str | None:
    """Name of the library beta schedule that produced `betas`, or None."""
    betas = betas.double().cpu()
    for name, fn in SCHEDULE_FUNCTIONS.items():
        if torch.allclose(fn(len(betas)).double(), betas, rtol=1e-4, atol=1e-6):
            return name
    return None


def detect_objective(loss_weight: torch.Tensor, alphas_cumprod: torch.Tensor) -> str | None:
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


def detected_from_buffers(ckpt: Checkpoint) -> dict[str, Any]:
    """Diffusion settings (timesteps, beta_schedule, objective) that a checkpoint's saved buffers reveal."""
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


def detect_legacy_config(ckpt: Checkpoint, unet_state: StateDict) -> Config:
    """Config for a checkpoint without one: the original's defaults, corrected by what the file reveals."""
    config = copy.deepcopy(ORIGINAL)
    config['model'].update(infer_unet_arch(unet_state))
    found = detected_from_buffers(ckpt)
    config['diffusion'].update(found)
    config['detected'] = found
    return config


def buffer_conflicts(ckpt: Checkpoint, config: Config) -> list[str]:
    """Where the diffusion buffers saved in a checkpoint (betas, loss_weight) contradict a config."""
    found = detected_from_buffers(ckpt)
    return [f'{key}: {value} in the weights vs {config["diffusion"].get(key)} in the config'
            for key, value in found.items() if value != config['diffusion'].get(key)]


def check_agrees(path: PathLike, ckpt: Checkpoint, config: Config, what: str) -> None:
    """Refuse a checkpoint whose weights or buffers say another model than `config` (named by `what`)."""
    state = unet_weights(ckpt, path, use_ema='unet' in ckpt or not ckpt.get('model'))
    diffs = arch_differences({'model': infer_unet_arch(state), 'diffusion': config['diffusion']}, config)
    diffs += buffer_conflicts(ckpt, config)
    if diffs:
        raise UserError(f'{path} holds another model than {what} ({"; ".join(diffs)}); use a new --results_folder, '
                        'or settings that match the checkpoint')


def find_config(path: PathLike, ckpt: Checkpoint, unet_state: StateDict) -> tuple[Config, bool]:
    """(config, legacy): the settings a checkpoint was trained with (embedded, its sidecar JSON or config.json
    beside it), else, for a file without any (legacy), the original's defaults corrected by its tensors."""
    path = Path(path)
    sidecar = path.with_suffix('.json')
    if path.suffix == '.safetensors' and sidecar.is_file():
        config = read_json(sidecar)
        expected = config.get('weights_sha256_16')
        if expected is not None and expected != file_digest(path):  # a kill between writing the two files
            raise UserError(f'{sidecar.name} describes other weights than {path.name} (its weights_sha256_16 does not '
                            'match); export the model again')
    else:
        config = ckpt.get('config') or read_config(path.parent)
    if config is None:
        return detect_legacy_config(ckpt, unet_state), True
    return config, False


def check_overrides(path: PathLike, config: Config, overrides: Config, *, legacy: bool) -> None:
    """Explicit flags may only repeat what the checkpoint says; a contradiction is an error. For a legacy
    checkpoint they also fill in what its file cannot reveal (e.g. image_size), in place."""
    known = {'model': set(MODEL_KEYS), 'diffusion': set(config['detected'])} if legacy else None
    for section, values in overrides.items():
        for key, value in values.items():
            ours = config[section].get(key)
            if legacy and key not in known[section]:
                config[section][key] = value
            elif list_if_seq(value) != list_if_seq(ours):
                raise UserError(f'--{FLAG_OF[key]} {value} contradicts the checkpoint {Path(path).name}, which has '
                                f'{key}={ours}; drop the flag')


def check_consistent(path: PathLike, ckpt: Checkpoint, unet_state: StateDict, config: Config, *,
                     legacy: bool) -> None:
    """The weights' shapes and the saved diffusion buffers must say what the config says."""
    diffs = arch_differences(config, {'model': infer_unet_arch(unet_state), 'diffusion': config['diffusion']})
    if diffs:
        raise UserError(f'{path} holds weights of another architecture than its config says ({"; ".join(diffs)})')
    conflicts = [] if legacy else buffer_conflicts(ckpt, config)
    if conflicts:
        raise UserError(f'{path}: its saved diffusion buffers contradict its config ({"; ".join(conflicts)}); '
                        'the config is wrong, do not trust it')


def resolve_config(path: PathLike, ckpt: Checkpoint, unet_state: StateDict, overrides: Config) -> Config:
    """Settings for a checkpoint: found (find_config), checked against explicit flags and against its tensors."""
    config, legacy = find_config(path, ckpt, unet_state)
    check_overrides(path, config, overrides, legacy=legacy)
    check_consistent(path, ckpt, unet_state, config, legacy=legacy)
    return config


def trained_on(config: Config) -> str:
    """The dataset a model was trained on (its data folder's dataset.json, kept in the config); MNIST for models
    from before datasets had entries."""
    return (config.get('data') or {}).get('dataset') or 'mnist'
