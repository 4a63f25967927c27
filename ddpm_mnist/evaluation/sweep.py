"""The sampler sweep: every (sampler, steps, eta) from the same noise, timed, scored and cached; its tables are
written by sweep_tables.py."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ddpm_mnist.model.conditional import Guidance
from ddpm_mnist.runtime import machine_name, progress
from ddpm_mnist.evaluation.intervals import differs, paired_fid_difference
from ddpm_mnist.evaluation.sweep_tables import FLOOR, write_outputs
from ddpm_mnist.evaluation.metrics import METRICS_VERSION, Evaluator, scores_from_json
from ddpm_mnist.sampling.registry import SAMPLERS, SamplerSettings, default, exists, label
from ddpm_mnist.sampling.loop import initial_noise, timed_sample
from ddpm_mnist.sampling.images import save_grid
from ddpm_mnist.sampling.samplers import recorded_times
from ddpm_mnist.utils import Diffusion, PathLike, UserError, atomic_path, file_digest, shown_path, write_json

DEFAULT_STEPS = (10, 20, 50, 100, 200, 1000)  # DDIM
DEFAULT_ETAS = (0.0, 0.5, 1.0)                # DDIM
DEFAULT_SOLVER_STEPS = (5, 10, 20, 50)        # every other sampler but DDPM
# The quick comparison (the demo's): sized to finish in about three minutes on a 2-core CPU with an N at which its
# headline pair, DDIM at 10 against 50 steps from the same x_T, can be told apart (docs/metrics.md).
QUICK = dict(samplers=('ddim', 'dpmpp_2m', 'unipc'), steps=(10, 50), etas=(0.0,), solver_steps=(10,), num_samples=300,
             headline=('DDIM 10, eta 0.0', 'DDIM 50, eta 0.0'))


def sweep_configs(samplers: Sequence[str], *, steps: Sequence[int], etas: Sequence[float], solver_steps: Sequence[int],
                  total_timesteps: int) -> list[SamplerSettings]:
    """Every configuration the sweep runs: DDPM at T, DDIM at every steps x eta, the other samplers at every
    solver_steps. DDIM with S = T and eta = 1 is left out next to DDPM: it is the same update with the same noise
    (tests/test_samplers.py checks they agree), so its row would only repeat DDPM's at the sweep's highest cost."""
    configs = []
    for name in samplers:
        spec = SAMPLERS[name]
        if spec.all_steps:
            configs.append(SamplerSettings.resolve(name, total_timesteps=total_timesteps))
            continue
        for s in (steps if spec.uses_eta else solver_steps):
            if not 1 <= s <= total_timesteps:
                flag = '--compare_steps' if spec.uses_eta else '--compare_solver_steps'
                raise UserError(f'{flag} {s} is outside 1..T={total_timesteps}')
            configs += [SamplerSettings.resolve(name, s, e, total_timesteps=total_timesteps)
                        for e in (etas if spec.uses_eta else (0.0,))
                        if not ('ddpm' in samplers and spec.uses_eta and s == total_timesteps and e == 1)]
    return configs


def eta_pairs(steps: Sequence[int]) -> list[tuple[str, str]]:
    """At each S, paired: DDIM eta 0 against eta 1 (the DDIM paper's ordering: eta 0 wins at every S < T), and the
    same ODE as DDIM eta 0 solved to second order (UniPC) against DDIM eta 0 and against eta 1: the first tells
    DDIM's first-order steps through the model's ODE from the ODE itself, the second that ODE from the model's SDE.
    The sweep keeps the pairs whose rows it holds."""
    return [pair for s in steps for pair in ((label('ddim', s, 0.0), label('ddim', s, 1.0)),
                                             (label('unipc', s), label('ddim', s, 0.0)),
                                             (label('unipc', s), label('ddim', s, 1.0)))]


# a distilled student's targets (docs/distillation.md), declared once for the sweep's pairs and target_table.py:
# (student steps, eta of the teacher's DDIM-50 row it is held to, the factor on that row's FID) -- 1 and 2 steps
# against the ODE it learned (eta 0), 4 steps against the stochastic sampler (eta 1)
STUDENT_TARGETS = ((2, 0.0, 1.0), (1, 0.0, 1.5), (4, 1.0, 1.0))
STUDENT_PAIRS = tuple((label('consistency', steps), label('ddim', 50, eta)) for steps, eta, _ in STUDENT_TARGETS)


def cache_key(**settings: Any) -> str:
    """Cache entries carry the metrics version, so results scored by an older set of metrics are recomputed."""
    settings = dict(settings, metrics=METRICS_VERSION)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def subset_stride(num_samples: int, ddpm_num_samples: int | None) -> int:
    """k such that DDPM draws every k-th of the sweep's x_T: 1 for all of them; refused unless it divides N."""
    n = default(ddpm_num_samples, num_samples)
    if not 1 <= n <= num_samples or num_samples % n:
        raise UserError(f'--compare_ddpm_samples {n} must divide --num_samples {num_samples} (e.g. 1000 of 10000): '
                        "DDPM draws every k-th of the sweep's x_T, so that its rows pair with the others'")
    return num_samples // n


def common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The features of two rows on the x_T both drew: a row of fewer samples (DDPM) drew every k-th."""
    if len(a) > len(b):
        return a[::len(a) // len(b)], b
    return (a, b[::len(b) // len(a)]) if len(b) > len(a) else (a, b)


def run_sweep(diffusion: Diffusion, evaluator: Evaluator, out_dir: PathLike, checkpoint: PathLike,
              configs: list[SamplerSettings], *,
              num_samples: int = 1000, ddpm_num_samples: int | None = None, batch_size: int = 250, seed: int = 0,
              precision: str = 'fp32', grid_images: int = 64,
              extra_score: Callable[[torch.Tensor], dict[str, Any]] | None = None,
              pairs: Sequence[tuple[str, str]] = (), labels: torch.Tensor | None = None,
              guidance: Guidance | None = None, student: tuple[PathLike, Diffusion] | None = None) -> dict[str, Any]:
    """Sample and score every config; results are cached per config so reruns and interrupted sweeps resume.
    DDPM (T steps per image, the costliest row) draws every k-th x_T, ddpm_num_samples in all (default: all N).
    A student's configs (its consistency sampler) run on `student` (its file, its diffusion) from the same x_T and
    digits, unguided: the guidance it was distilled with is in its weights."""
    out_dir = Path(out_dir)
    (out_dir / 'cache').mkdir(parents=True, exist_ok=True)
    (out_dir / 'grids').mkdir(exist_ok=True)
    stride = subset_stride(num_samples, ddpm_num_samples)
    noise = initial_noise(num_samples, diffusion.channels, diffusion.image_size[0], seed)
    digests = {'teacher': file_digest(checkpoint), 'student': file_digest(student[0]) if student else None}
    rows, features = [], {}
    for c in progress(configs, desc='sweep', unit='config'):
        if c.spec.student and not student:
            raise UserError(f'{c.label} samples a distilled student; give the sweep one (--compare_student)')
        model, digest = (student[1], digests['student']) if c.spec.student else (diffusion, digests['teacher'])
        picked = slice(None, None, stride if c.spec.all_steps else 1)  # DDPM: every k-th x_T
        n = len(noise[picked])
        conditioning = {} if labels is None else dict(labels=labels[picked],
                                                      guidance=None if c.spec.student else guidance)
        # a student's tuned times for this step count (scripts/student_times.py) are part of what its rows sampled
        times = recorded_times(model.student, c.steps) if c.spec.student else None
        key = cache_key(checkpoint=digest, n=n, seed=seed, **({} if times is None else dict(sample_times=times)),
                        precision=precision, batch_size=batch_size, device=str(diffusion.device),
                        extra=bool(extra_score), scorer=evaluator.identity, **asdict(c),
                        **({} if stride == 1 or not c.spec.all_steps else dict(stride=stride)),
                        **({} if labels is None else dict(labels=conditioning['labels'].tolist(),
                                                          guidance=list(guidance))))
        cached = out_dir / 'cache' / f'{key}.json'
        features_file = cached.with_suffix('.features.npy')
        if cached.is_file() and features_file.is_file():
            rows.append(scores_from_json(json.loads(cached.read_text())))
            features[rows[-1]['config']] = np.load(features_file).astype(np.float64)
            continue
        images, seconds = timed_sample(model, c, num_samples=n, batch_size=batch_size, seed=seed,
                                       noise=noise[picked], **{k: v for k, v in conditioning.items() if exists(v)})
        if not images.isfinite().all():
            raise UserError(f'{c.label} produced NaN images; the checkpoint or precision is broken')
        grid = out_dir / 'grids' / f'{c.grid_name}.png'
        save_grid(images[:grid_images], grid, dict(asdict(c), checkpoint_sha256_16=digest, seed=seed))
        row = dict(config=c.label, **asdict(c), nfe=c.steps,  # one Unet call per step, every sampler
                   seconds=seconds, seconds_per_image=seconds / n, grid=str(grid.relative_to(out_dir)),
                   **evaluator.score(images), **(extra_score(images) if extra_score else {}))
        features[row['config']] = evaluator.features(images).astype(np.float32).astype(np.float64)  # as cached
        with atomic_path(features_file) as tmp:
            with open(tmp, 'wb') as f:
                np.save(f, features[row['config']].astype(np.float32))
        write_json(cached, row)
        rows.append(row)
    add_paired_differences(rows, features, evaluator.reference_fit, seed=seed)
    compared = []
    for a, b in (pair for pair in pairs if all(name in features for name in pair)):
        diff = paired_fid_difference(*common(features[a], features[b]), evaluator.reference_fit, seed=seed)
        compared.append(dict(a=a, b=b, **diff._asdict(), differs=differs(diff)))
    calibration = cached_calibration(evaluator, out_dir, num_samples, seed)
    for n in sorted({r['n'] for r in rows} - {num_samples}):  # a DDPM row of fewer samples: the floor at its N
        floor = cached_calibration(evaluator, out_dir, n, seed).get(FLOOR)
        if floor is not None:
            calibration[f'{FLOOR}, N = {n}'] = floor
    result = dict(checkpoint=shown_path(checkpoint), checkpoint_sha256_16=digests['teacher'],
                  machine=machine_name(diffusion.device), device=str(diffusion.device), precision=precision,
                  num_samples=num_samples, batch_size=batch_size, seed=seed,
                  reference_images=evaluator.reference_count, train_images=evaluator.train_count,
                  rows=rows, calibration=calibration, pairs=compared,
                  **(dict(student=shown_path(student[0]), student_sha256_16=digests['student']) if student else {}))
    write_outputs(result, out_dir)
    return result


def cached_calibration(evaluator: Evaluator, out_dir: Path, n: int, seed: int) -> dict[str, dict[str, Any]]:
    """Evaluator.calibration(n) (the floor, mirrored digits, the ceiling), cached beside the sweep's rows."""
    cached = out_dir / 'cache' / f'{cache_key(kind="calibration", n=n, seed=seed, scorer=evaluator.identity)}.json'
    if cached.is_file():
        return {name: scores_from_json(r) for name, r in json.loads(cached.read_text()).items()}
    calibration = evaluator.calibration(n)
    write_json(cached, calibration)
    return calibration


def add_paired_differences(rows: list[dict[str, Any]], features: dict[str, np.ndarray],
                           reference_fit: tuple[np.ndarray, np.ndarray],
                           *, seed: int = 0) -> None:
    """For every row, FID minus the DDPM-T row's and minus the best (lowest-FID) row's, each with the interval of
    the paired bootstrap (the same sample indices in both: every configuration starts from the same x_T; against a
    DDPM row of fewer samples, on the x_T it drew). The best row is taken among the rows of the sweep's full N:
    FID's finite-sample bias grows as N shrinks, so a row of fewer samples is not ranked against them."""
    if not rows:
        return
    full = max(r['n'] for r in rows)
    best = min((r for r in rows if r['n'] == full), key=lambda r: r['fid'])
    ddpm = next((r for r in rows if SAMPLERS[r['strategy']].all_steps), None)
    for row in rows:
        for name, other in (('ddpm', ddpm), ('best', best)):
            if other is None:
                continue
            diff = paired_fid_difference(*common(features[row['config']], features[other['config']]), reference_fit,
                                         seed=seed)
            row.update({f'fid_minus_{name}': diff.value, f'fid_minus_{name}_low': diff.low,
                        f'fid_minus_{name}_high': diff.high, f'differs_from_{name}': differs(diff)})
    for row in rows:
        row['is_best'] = row is best


# what makes two sweeps parts of one: the same model, x_T (seed, N), precision, batch, reference and machine
SAME_SWEEP = ('checkpoint_sha256_16', 'seed', 'num_samples', 'precision', 'batch_size', 'reference_images',
              'train_images', 'machine')


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One sweep from sweeps of the same x_T run in parts (comparison.json each): their rows, pairs and calibration
    together, the first part's row where two hold a config. A config two parts both ran must score the same FID in
    each (the proof that they drew the same samples), else the parts are refused. A row keeps its paired difference
    from the best row only where its part's best is the merged best (else –); its difference from DDPM is kept."""
    first = results[0]
    for key in SAME_SWEEP:
        values = {str(r.get(key)) for r in results}
        if len(values) > 1:
            raise UserError(f'the sweeps differ in {key} ({", ".join(sorted(values))}): only parts of one sweep '
                            '(same model, seed, N, precision, batch, machine) can be merged')
    students = {r['student_sha256_16'] for r in results if 'student' in r}
    if len(students) > 1:
        raise UserError(f'the sweeps hold different students ({", ".join(sorted(students))}); merge one at a time')
    rows, seconds = {}, []
    for result in results:
        part_best = next((r['config'] for r in result['rows'] if r.get('is_best')), None)
        for row in result['rows']:
            seen = rows.get(row['config'])
            if seen is None:
                rows[row['config']] = dict(row, part_best=part_best)
            elif not math.isclose(seen['fid'], row['fid'], rel_tol=1e-9):
                raise UserError(f'{row["config"]} scores FID {seen["fid"]:.4f} in one sweep and {row["fid"]:.4f} in '
                                'another: they did not draw the same samples; run them into one results folder')
            else:
                seconds.append(row['seconds_per_image'] / seen['seconds_per_image'])
    full = [r for r in rows.values() if r['n'] == first['num_samples']]
    best = min(full, key=lambda r: r['fid'])['config']
    order = list(SAMPLERS)
    merged = sorted(rows.values(), key=lambda r: (order.index(r['strategy']), r['steps'], r['eta'] or 0))
    for row in merged:
        if row.pop('part_best') != best:  # its difference was taken from another best row
            for key in ('fid_minus_best', 'fid_minus_best_low', 'fid_minus_best_high', 'differs_from_best'):
                row.pop(key, None)
        row['is_best'] = row['config'] == best
    pairs, calibration = {}, {}
    for result in results:  # the first part's where two hold one
        for pair in result.get('pairs', []):
            pairs.setdefault((pair['a'], pair['b']), pair)
        for name, scores in result['calibration'].items():
            calibration.setdefault(name, scores)
    student = next((dict(student=r['student'], student_sha256_16=r['student_sha256_16']) for r in results
                    if 'student' in r), {})
    return dict(first, **student, rows=merged, pairs=list(pairs.values()), calibration=calibration,
                parts=dict(count=len(results), shared_rows=len(seconds),
                           seconds_ratio=[round(min(seconds), 3), round(max(seconds), 3)] if seconds else None))
