"""A results folder's rules: config.json, the milestones model-N.pt, resuming, the loss log (its lock:
utils.FolderLock)."""
from __future__ import annotations

import re
from pathlib import Path

from ddpm_mnist.model.network import arch_differences
from ddpm_mnist.utils import Config, PathLike, UserError, atomic_path, read_json, remove_stale_temporaries, write_json

CONFIG_NAME = 'config.json'
LOSS_LOG = 'loss.csv'
MILESTONE_RE = re.compile(r'^model-(\d+)\.pt$')


def read_config(folder: PathLike) -> Config | None:
    """A results folder's config.json, or None where it has none."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    config = read_json(path)
    if not all(section in config for section in ('model', 'diffusion')):
        raise UserError(f'{path} has no model/diffusion settings; it was not written by train_ddpm_mnist.py')
    return config


def write_config(folder: PathLike, config: Config) -> None:
    write_json(Path(folder) / CONFIG_NAME, config)


def check_against_folder(config: Config, folder: PathLike) -> None:
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


def milestones(folder: PathLike) -> list[int]:
    """Milestone numbers of the model-N.pt files in a results folder, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := MILESTONE_RE.match(p.name)))


def milestone_path(folder: PathLike, milestone: int) -> Path:
    return Path(folder) / f'model-{milestone}.pt'


def find_milestone(folder: PathLike, milestone: int) -> Path:
    """model-N.pt of a folder, or a one-line error naming the milestones it does have."""
    path = milestone_path(folder, milestone)
    if not path.is_file():
        found = milestones(folder)
        have = f'it has milestones {", ".join(map(str, found))}' if found else 'it has no model-N.pt files'
        raise UserError(f'milestone {milestone} not found in {folder} ({have})')
    return path


def resolve_resume(folder: PathLike, resume: str) -> int | None:
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


def prepare_folder(folder: PathLike, config: Config) -> None:
    """Under the lock: check the folder still fits this run, clear killed runs' temporaries, write config.json."""
    check_against_folder(config, folder)  # again under the lock: another run may have started meanwhile
    remove_stale_temporaries(folder)
    write_config(folder, config)


def write_loss_log(folder: PathLike, losses: dict[int, float]) -> None:
    with atomic_path(Path(folder) / LOSS_LOG) as tmp:
        tmp.write_text('step,loss\n' + ''.join(f'{step},{loss:.6f}\n' for step, loss in sorted(losses.items())))


def read_loss_log(folder: PathLike) -> dict[int, float]:
    """{step: loss} from a run's loss.csv (empty if there is none)."""
    path = Path(folder) / LOSS_LOG
    if not path.is_file():
        return {}
    rows = path.read_text().splitlines()[1:]
    return {int(step): float(loss) for step, loss in (row.split(',') for row in rows if row)}
