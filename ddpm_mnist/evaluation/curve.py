"""Quality over training: score every milestone of a run with DDIM at one or more etas (the deterministic sampler,
eta 0, and the stochastic one, eta 1, by default; a distilled student with its consistency sampler at 1, 2 and 4
steps), paired seeds, and plot FID against images seen with the real-data floor, one series per sampler. Scores
are cached per milestone in the run folder, keyed by everything that changes them, so rerunning after more
milestones only scores the new ones."""
from __future__ import annotations

import csv
from collections import namedtuple
from pathlib import Path
from typing import Any, Callable

import torch

from ddpm_mnist.api import load_model
from ddpm_mnist.model.checkpoints import segments_of
from ddpm_mnist.evaluation.intervals import error_bars, interval_cell
from ddpm_mnist.evaluation.metrics import METRICS_VERSION, Evaluator, scores_from_json
from ddpm_mnist.training.run_folder import milestone_path, milestones
from ddpm_mnist.sampling.loop import sample
from ddpm_mnist.sampling.registry import SamplerSettings, label
from ddpm_mnist.utils import (PathLike, UserError, atomic_path, file_digest, read_json, remove_stale_temporaries,
                              write_json)

CACHE = 'milestone_scores.json'
CurveSettings = namedtuple('CurveSettings', 'steps eta num_samples seed batch_size precision strategy',
                           defaults=('ddim',))


def sampler_of(settings: CurveSettings, total_timesteps: int) -> SamplerSettings:
    """The sampler configuration a curve's settings name."""
    eta = 0.0 if settings.eta is None else settings.eta  # a sampler without an eta ignores it
    return SamplerSettings.resolve(settings.strategy, settings.steps, eta, total_timesteps=total_timesteps)


def score_milestone(path: PathLike, evaluator: Evaluator, settings: CurveSettings,
                    device: str | torch.device = 'cpu') -> dict[str, Any]:
    """One checkpoint's scores (the curve's sampler), with its step and images seen in all segments."""
    model = load_model(path, device=str(device), precision=settings.precision)
    config, info = model.config, model.info
    sampler = sampler_of(settings, model.timesteps)
    images = sample(model.diffusion, sampler, num_samples=settings.num_samples, batch_size=settings.batch_size,
                    seed=settings.seed)
    scores = evaluator.score(images)
    earlier = segments_of((config.get('init_from') or {}).get('provenance'))
    before = sum(seg.get('images_seen') or 0 for seg in earlier)
    return dict(eta=settings.eta, series=sampler.label, step=info['step'], images_seen=info['images_seen'],
                wall_seconds=info['wall_seconds'], segment=len(earlier) + 1,
                total_images_seen=before + (info['images_seen'] or 0), **scores)


def with_earlier_segments(rows: list[dict[str, Any]], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's rows after the rows of earlier segments kept from a previous curve (a run continued with
    --init_from on a fresh machine has only its own milestones on disk)."""
    first = min(row.get('segment', 1) for row in rows)
    return [row for row in previous if row.get('segment', 1) < first] + rows


def chosen_milestones(found: list[int], which: str) -> list[int]:
    """'all', 'last', 'every:K' (every K-th of `found`, counted from the first, and the last) or '3,5' -> the
    milestone numbers of `found` to score."""
    if which == 'all':
        return found
    if which == 'last':
        return found[-1:]
    if which.startswith('every:'):
        k = which.removeprefix('every:')
        if not k.isdigit() or int(k) < 1:
            raise UserError(f'--milestones {which}: K of every:K must be a whole number of at least 1')
        return sorted(set(found[::int(k)]) | set(found[-1:]))
    try:
        wanted = [int(x) for x in which.split(',')]
    except ValueError:
        raise UserError(f'--milestones {which} is not all, last, every:K or comma-separated numbers') from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise UserError(f'milestone(s) {missing} not found; the folder has {found}')
    return sorted(wanted)


def score_run(folder: PathLike, evaluator: Evaluator, settings: CurveSettings, *, classifier_digest: str,
              device: str | torch.device = 'cpu', log: Callable[[str], None] = print,
              which: str = 'all') -> list[dict[str, Any]]:
    """Rows of scores, one per milestone, oldest first; cached in FOLDER/milestone_scores.json."""
    folder = Path(folder)
    found = milestones(folder)
    if not found:
        raise UserError(f'{folder} has no milestones (model-N.pt); train first or give another --results_folder')
    found = chosen_milestones(found, which)
    remove_stale_temporaries(folder)
    cache_path = folder / CACHE
    cache = read_json(cache_path) if cache_path.is_file() else {}
    key = (f'{settings.strategy}{settings.steps}-eta{settings.eta}-n{settings.num_samples}-seed{settings.seed}-'
           f'{settings.precision}-metrics{METRICS_VERSION}-clf{classifier_digest}-ref{evaluator.image_size}')
    rows = []
    for milestone in found:
        path = milestone_path(folder, milestone)
        entry_key = f'{milestone}:{file_digest(path)}:{key}'
        if entry_key not in cache:
            cache[entry_key] = dict(milestone=milestone, **score_milestone(path, evaluator, settings, device))
            write_json(cache_path, cache)
        row = scores_from_json(cache[entry_key])
        row.setdefault('series', label(settings.strategy, settings.steps, settings.eta))  # cached before it was named
        log(f'milestone {milestone}: step {row["step"]}, {row["images_seen"]} images seen, {row["series"]}: '
            f'FID {row["fid"]:.2f}')
        rows.append(row)
    return rows


def write_curve(rows: list[dict[str, Any]], floor: float, out_stem: PathLike, *, title: str,
                settings: dict[str, Any] | None = None) -> None:
    """out_stem.csv / .md / .json (the table) and out_stem.png (FID against images seen, floor drawn, segments
    of a run continued with --init_from marked)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_stem = Path(out_stem)
    nan = float('nan')
    for row in rows:  # rows cached before segments, intervals, etas or the sampler's name were recorded
        row.setdefault('eta', (settings or {}).get('eta', 1.0))
        row.setdefault('series', label('ddim', (settings or {}).get('steps', 50), row['eta']))
        row.setdefault('segment', 1)
        row.setdefault('total_images_seen', row['images_seen'])
        for key in ('fid_low', 'fid_high', 'inception_score_low', 'inception_score_high'):
            row.setdefault(key, nan)
    rows = sorted(rows, key=lambda r: (r['series'], r['segment'], r['milestone']))  # one series per sampler
    columns = ('series', 'eta', 'segment', 'milestone', 'step', 'images_seen', 'total_images_seen', 'fid', 'fid_low',
               'fid_high', 'inception_score', 'inception_score_low', 'inception_score_high', 'confidence',
               'min_class_share', 'near_copy_share')
    with atomic_path(out_stem.with_suffix('.csv')) as tmp:
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([[row[c] for c in columns] for row in rows])
    lines = ['| sampler | segment | milestone | step | images seen | FID [95 %] | FID / floor | IS [95 %] | '
             'confidence | smallest class | near-copies |', '|---|---|---|---|---|---|---|---|---|---|---|']
    lines += [f'| {r["series"]} | {r["segment"]} | {r["milestone"]} | {r["step"]} | {r["total_images_seen"]:,} | '
              f'{interval_cell(r, "fid")} | {r["fid"] / floor:.2f}x | '
              f'{interval_cell(r, "inception_score")} | {r["confidence"]:.3f} | {100 * r["min_class_share"]:.1f}% | '
              f'{100 * r["near_copy_share"]:.1f}% |' for r in rows]
    lines.append(f'\nReal-data floor (real training digits, same N): FID {floor:.2f}. Intervals: bootstrap over the '
                 'samples, reference fixed (docs/metrics.md).')
    with atomic_path(out_stem.with_suffix('.md')) as tmp:
        tmp.write_text(title + '\n\n' + '\n'.join(lines) + '\n')
    write_json(out_stem.with_suffix('.json'), dict(title=title, settings=settings, floor_fid=floor, rows=rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r['series'] for r in rows}):
        series = [r for r in rows if r['series'] == name]
        ax.errorbar([r['total_images_seen'] for r in series], [r['fid'] for r in series], yerr=error_bars(series),
                    fmt='o-', capsize=2, label=f'{name} (EMA weights), 95 % interval')
    rows = [r for r in rows if r['series'] == rows[0]['series']]  # segment boundaries from one series
    for before, after in zip(rows, rows[1:]):
        if after['segment'] != before['segment']:
            ax.axvline(before['total_images_seen'], color='tab:orange', linestyle=':', linewidth=1,
                       label='segment boundary' if before['segment'] == rows[0]['segment'] else None)
    ax.axhline(floor, color='grey', linestyle='--', label=f'real-data floor ({floor:.1f})')
    ax.set_xlabel('training images seen')
    ax.set_ylabel('FID (project classifier features)')
    ax.set_yscale('log')
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_stem.with_suffix('.png')) as tmp:
        fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)
