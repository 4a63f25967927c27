"""The sampler sweep: every (sampler, steps, eta) from the same noise, timed, scored, cached and tabulated."""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ddpm_mnist.model.conditional import Guidance
from ddpm_mnist.device import machine_name
from ddpm_mnist.hints import Diffusion, PathLike
from ddpm_mnist.evaluation.intervals import differs, error_bars, interval_cell, number_cell, paired_fid_difference
from ddpm_mnist.evaluation.metrics import METRICS_VERSION, Evaluator, scores_from_json
from ddpm_mnist.sampling.registry import SAMPLERS, SamplerSettings
from ddpm_mnist.sampling.loop import initial_noise, timed_sample
from ddpm_mnist.sampling.images import save_grid
from ddpm_mnist.progress import progress
from ddpm_mnist.utils import UserError, atomic_path, file_digest, shown_path, write_json

DEFAULT_STEPS = (10, 20, 50, 100, 200, 1000)  # DDIM
DEFAULT_ETAS = (0.0, 0.5, 1.0)                # DDIM
DEFAULT_SOLVER_STEPS = (5, 10, 20, 50)        # every other sampler but DDPM
# The quick comparison (the demo's): sized to finish in about three minutes on a 2-core CPU with an N at which its
# headline pair, DDIM at 10 against 50 steps from the same x_T, can be told apart (docs/metrics.md).
QUICK = dict(samplers=('ddim', 'dpmpp_2m', 'unipc'), steps=(10, 50), etas=(0.0,), solver_steps=(10,), num_samples=300,
             headline=('DDIM 10, eta 0.0', 'DDIM 50, eta 0.0'))
COLUMNS = ('config', 'strategy', 'steps', 'eta', 'nfe', 'n', 'seconds_per_image', 'fid', 'fid_low', 'fid_high', 'kid',
           'kid_low', 'kid_high', 'fid_minus_ddpm', 'fid_minus_ddpm_low', 'fid_minus_ddpm_high', 'fid_minus_best',
           'fid_minus_best_low', 'fid_minus_best_high', 'fid_b', 'fid_b_low', 'fid_b_high', 'inception_score',
           'inception_score_low', 'inception_score_high', 'confidence', 'min_class_share', 'class_kl_uniform',
           'precision', 'recall', 'median_nn_train_l2', 'near_copy_share', 'flip_preferred_share', 'inception_fid')


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
    """DDIM eta 0 against eta 1 at each S: the DDIM paper's ordering (eta 0 wins at every S < T), paired. The sweep
    keeps the pairs whose rows it holds."""
    return [(f'DDIM {s}, eta 0.0', f'DDIM {s}, eta 1.0') for s in steps]


def cache_key(**settings: Any) -> str:
    """Cache entries carry the metrics version, so results scored by an older set of metrics are recomputed."""
    settings = dict(settings, metrics=METRICS_VERSION)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_sweep(diffusion: Diffusion, evaluator: Evaluator, out_dir: PathLike, checkpoint: PathLike,
              configs: list[SamplerSettings], *,
              num_samples: int = 1000, batch_size: int = 250, seed: int = 0, precision: str = 'fp32',
              grid_images: int = 64, extra_score: Callable[[torch.Tensor], dict[str, Any]] | None = None,
              pairs: Sequence[tuple[str, str]] = (), labels: torch.Tensor | None = None,
              guidance: Guidance | None = None) -> dict[str, Any]:
    """Sample and score every config; results are cached per config so reruns and interrupted sweeps resume."""
    out_dir = Path(out_dir)
    (out_dir / 'cache').mkdir(parents=True, exist_ok=True)
    (out_dir / 'grids').mkdir(exist_ok=True)
    device = diffusion.device
    digest = file_digest(checkpoint)
    noise = initial_noise(num_samples, diffusion.channels, diffusion.image_size[0], seed)
    rows, features = [], {}
    for c in progress(configs, desc='sweep', unit='config'):
        key = cache_key(checkpoint=digest, n=num_samples, seed=seed, precision=precision, batch_size=batch_size,
                        device=str(device), extra=bool(extra_score), scorer=evaluator.identity, **asdict(c),
                        **({} if labels is None else dict(labels=labels.tolist(), guidance=list(guidance))))
        cached = out_dir / 'cache' / f'{key}.json'
        features_file = cached.with_suffix('.features.npy')
        if cached.is_file() and features_file.is_file():
            rows.append(scores_from_json(json.loads(cached.read_text())))
            features[rows[-1]['config']] = np.load(features_file).astype(np.float64)
            continue
        images, seconds = timed_sample(diffusion, c, num_samples=num_samples, batch_size=batch_size, seed=seed,
                                       noise=noise, **({} if labels is None else dict(labels=labels, guidance=guidance)))
        if not images.isfinite().all():
            raise UserError(f'{c.label} produced NaN images; the checkpoint or precision is broken')
        grid = out_dir / 'grids' / f'{c.grid_name}.png'
        save_grid(images[:grid_images], grid, dict(asdict(c), checkpoint_sha256_16=digest, seed=seed))
        row = dict(config=c.label, **asdict(c), nfe=c.steps,  # one Unet call per step, every sampler
                   seconds=seconds, seconds_per_image=seconds / num_samples, grid=str(grid.relative_to(out_dir)),
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
        diff = paired_fid_difference(features[a], features[b], evaluator.reference_fit, seed=seed)
        compared.append(dict(a=a, b=b, **diff._asdict(), differs=differs(diff)))
    key = cache_key(kind='calibration', n=num_samples, seed=seed, scorer=evaluator.identity)
    cached = out_dir / 'cache' / f'{key}.json'
    if cached.is_file():
        calibration = {name: scores_from_json(r) for name, r in json.loads(cached.read_text()).items()}
    else:
        calibration = evaluator.calibration(num_samples)
        write_json(cached, calibration)
    result = dict(checkpoint=shown_path(checkpoint), checkpoint_sha256_16=digest, machine=machine_name(device),
                  device=str(device), precision=precision, num_samples=num_samples, batch_size=batch_size,
                  seed=seed, reference_images=evaluator.reference_count, train_images=evaluator.train_count,
                  rows=rows, calibration=calibration, pairs=compared)
    write_outputs(result, out_dir)
    return result


def add_paired_differences(rows: list[dict[str, Any]], features: dict[str, np.ndarray],
                           reference_fit: tuple[np.ndarray, np.ndarray],
                           *, seed: int = 0) -> None:
    """For every row, FID minus the DDPM-1000 row's and minus the best (lowest-FID) row's, each with the interval of
    the paired bootstrap (the same sample indices in both: every configuration starts from the same x_T)."""
    if not rows:
        return
    best = min(rows, key=lambda r: r['fid'])
    ddpm = next((r for r in rows if SAMPLERS[r['strategy']].all_steps), None)
    for row in rows:
        for name, other in (('ddpm', ddpm), ('best', best)):
            if other is None:
                continue
            diff = paired_fid_difference(features[row['config']], features[other['config']], reference_fit, seed=seed)
            row.update({f'fid_minus_{name}': diff.value, f'fid_minus_{name}_low': diff.low,
                        f'fid_minus_{name}_high': diff.high, f'differs_from_{name}': differs(diff)})
    for row in rows:
        row['is_best'] = row is best


def write_outputs(result: dict[str, Any], out_dir: PathLike) -> None:
    out_dir = Path(out_dir)
    write_json(out_dir / 'comparison.json', result)
    calibration_rows = [dict(config=name, **scores) for name, scores in result['calibration'].items()]
    with atomic_path(out_dir / 'comparison.csv') as tmp:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction='ignore', restval='')
            writer.writeheader()
            writer.writerows(result['rows'] + calibration_rows)
    with atomic_path(out_dir / 'comparison.md') as tmp:
        tmp.write_text(markdown_table(result))
    plot(result, out_dir / 'comparison.png')


def markdown_table(result: dict[str, Any]) -> str:
    head = ['config', 'NFE', 's/image', 'FID [95 %]', 'vs DDPM-1000', 'vs best', 'KID [95 %]', 'IS [95 %]',
            'confidence', 'smallest class', 'KL to uniform', 'precision', 'recall', 'near-copies', 'flip-preferred']
    rows = [[r['config'], str(r['nfe']), f'{r["seconds_per_image"]:.4f}', interval_cell(r, 'fid'),
             difference_cell(r, 'ddpm'), difference_cell(r, 'best'), interval_cell(r, 'kid'), *score_cells(r)]
            for r in result['rows']]
    rows += [[f'*{name}*', '–', '–', interval_cell(r, 'fid'), '–', '–', interval_cell(r, 'kid'),
              *score_cells(r)] for name, r in result['calibration'].items()]
    kept = [i for i in range(len(head)) if i == 0 or any(row[i] != '–' for row in rows)]  # no all-empty column
    lines = [f'N = {result["num_samples"]} samples per config, seed {result["seed"]}, {result["precision"]}, batch '
             f'{result["batch_size"]}, on {result["machine"]}; reference: {result["reference_images"]} MNIST test '
             'digits. Intervals: bootstrap over the samples (reference fixed); "vs": paired FID difference with its '
             'interval, * where it excludes 0 (the same x_T in every row); –: not measured.', '',
             '| ' + ' | '.join(head[i] for i in kept) + ' |', '|' + '---|' * len(kept)]
    lines += ['| ' + ' | '.join(row[i] for i in kept) + ' |' for row in rows]
    lines += ['', *map(pair_sentence, result.get('pairs', [])), *feature_space_agreement(result['rows']),
              what_the_numbers_show(result)]
    return '\n'.join(lines) + '\n'


def feature_space_agreement(rows: list[dict[str, Any]]) -> list[str]:
    """Whether the second feature network orders the rows as the first does: pairs agreeing, and those that do not."""
    rows = [r for r in rows if r.get('fid_b') is not None]
    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
    if not pairs:
        return []
    disagree = [(a, b) for a, b in pairs if (a['fid'] - b['fid']) * (a['fid_b'] - b['fid_b']) < 0]
    text = (f'**Second feature network** (scripts/train_classifier.py --arch wide): it orders '
            f'{len(pairs) - len(disagree)} of the {len(pairs)} pairs of rows as the first does.')
    if disagree:
        text += ' Ordered the other way: ' + '; '.join(f'{a["config"]} / {b["config"]}' for a, b in disagree) + '.'
    return [text]


def pair_sentence(pair: dict[str, Any]) -> str:
    """One line on a headline pair: its paired FID difference and whether it is significant."""
    verdict = ('the difference is significant (its interval excludes 0)' if pair['differs'] else
               'no difference can be told at this N (its interval contains 0)')
    return (f'**{pair["a"]} against {pair["b"]}**: FID difference {pair["value"]:+.2f} [{pair["low"]:+.2f}, '
            f'{pair["high"]:+.2f}], paired bootstrap over the same x_T: {verdict}.')


def what_the_numbers_show(result: dict[str, Any]) -> str:
    """What a table at this N can and cannot show, in one paragraph."""
    floor = result['calibration'].get('real training digits (floor)', {}).get('fid')
    floor_text = f' (real digits score {floor:.1f} here)' if floor is not None else ''
    return (f'What these numbers can show: at N = {result["num_samples"]} every FID carries a finite-sample bias'
            f'{floor_text}, so compare rows with each other, through the paired differences, not with FIDs '
            'published elsewhere or at another N; two rows whose difference interval contains 0 are not ranked.')


def difference_cell(r: dict[str, Any], name: str) -> str:
    """A row's paired difference from the DDPM or the best row, starred where significant."""
    if r.get(f'fid_minus_{name}') is None:
        return '–'
    if name == 'best' and r.get('is_best') or name == 'ddpm' and SAMPLERS[r['strategy']].all_steps:
        return '(this row)'
    star = ' *' if r[f'differs_from_{name}'] else ''
    value, low, high = (r[f'fid_minus_{name}{end}'] for end in ('', '_low', '_high'))
    return f'{value:+.2f} [{low:+.2f}, {high:+.2f}]{star}'


def score_cells(r: dict[str, Any]) -> list[str]:
    """The table cells after FID: IS, confidence, class balance, precision/recall, near-copies, flips."""
    return [interval_cell(r, 'inception_score'), *(number_cell(r.get(key)) for key in (
        'confidence', 'min_class_share', 'class_kl_uniform', 'precision', 'recall', 'near_copy_share',
        'flip_preferred_share'))]


def plot_series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{legend label: rows} with one line per sampler (per eta for DDIM); DDPM, a single point, apart."""
    series = {}
    for r in rows:
        spec = SAMPLERS[r['strategy']]
        name = f'{spec.label} eta={r["eta"]}' if spec.uses_eta else spec.label
        series.setdefault(name, []).append(r)
    return series


def plot(result: dict[str, Any], path: PathLike) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    floor = result['calibration'].get('real training digits (floor)', {}).get('fid')
    for ax, x_key, x_label in ((axes[0], 'nfe', 'NFE (Unet evaluations per image)'),
                               (axes[1], 'seconds_per_image', 'seconds per image')):
        for name, rows in plot_series(result['rows']).items():
            rows = sorted(rows, key=lambda r: r[x_key])
            x, y = [r[x_key] for r in rows], [r['fid'] for r in rows]
            spread = error_bars(rows)  # the bootstrap interval
            if SAMPLERS[rows[0]['strategy']].all_steps:
                ax.errorbar(x, y, yerr=spread, fmt='*', ms=14, color='black', zorder=5, capsize=3,
                            label=f'{name} (T steps)')
            else:  # dashed where a sampler is another's twin (Euler ancestral is DDIM with eta 1)
                ax.errorbar(x, y, yerr=spread, marker='o', capsize=3, label=name, ls='--' if 'eta=1' in name else '-')
        if floor is not None:
            ax.axhline(floor, ls='--', color='grey', label='real digits (floor)')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.yaxis.set_major_formatter(FormatStrFormatter('%g'))
        ax.yaxis.set_minor_formatter(FormatStrFormatter('%g'))
        ax.set_xlabel(x_label)
        ax.set_ylabel(f'FID in classifier features (N={result["num_samples"]})')
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f'Samplers from the same x_T on {result["machine"]}', fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format='png')
    plt.close(fig)
