"""The sweep's outputs, written from its result: comparison.json, .csv (one row per config plus the calibration
rows), .md (the table, its headline pairs and what the numbers can show) and .png (FID against NFE and seconds)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ddpm_mnist.evaluation.intervals import error_bars, interval_cell, number_cell
from ddpm_mnist.sampling.registry import SAMPLERS
from ddpm_mnist.utils import PathLike, atomic_path, write_json

FLOOR = 'real training digits (floor)'  # the calibration row a sweep's FIDs are read against
COLUMNS = ('config', 'strategy', 'steps', 'eta', 'nfe', 'n', 'seconds_per_image', 'fid', 'fid_low', 'fid_high', 'kid',
           'kid_low', 'kid_high', 'fid_minus_ddpm', 'fid_minus_ddpm_low', 'fid_minus_ddpm_high', 'fid_minus_best',
           'fid_minus_best_low', 'fid_minus_best_high', 'fid_b', 'fid_b_low', 'fid_b_high', 'inception_score',
           'inception_score_low', 'inception_score_high', 'confidence', 'min_class_share', 'class_kl_uniform',
           'precision', 'recall', 'median_nn_train_l2', 'near_copy_share', 'flip_preferred_share', 'inception_fid')


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
    lines = [f'N = {result["num_samples"]} samples per config{fewer_samples(result)}, seed {result["seed"]}, '
             f'{result["precision"]}, batch {result["batch_size"]}, on {result["machine"]}; reference: '
             f'{result["reference_images"]} MNIST test digits. Intervals: bootstrap over the samples (reference '
             'fixed); "vs": paired FID difference with its interval, * where it excludes 0 (the same x_T in every row'
             '; against a row of fewer samples, on the x_T it drew); –: not measured.' + student_sentence(result)
             + parts_sentence(result), '',
             '| ' + ' | '.join(head[i] for i in kept) + ' |', '|' + '---|' * len(kept)]
    lines += ['| ' + ' | '.join(row[i] for i in kept) + ' |' for row in rows]
    lines += ['', *map(pair_sentence, result.get('pairs', [])), *feature_space_agreement(result['rows']),
              what_the_numbers_show(result)]
    return '\n'.join(lines) + '\n'


def fewer_samples(result: dict[str, Any]) -> str:
    """' (DDPM 1000: N = 1000, one x_T in 10, ...)' for the rows drawn on a subset of the sweep's x_T, else ''."""
    fewer = [r for r in result['rows'] if r['n'] < result['num_samples']]
    return ''.join(f' ({r["config"]}: N = {r["n"]}, one x_T in {result["num_samples"] // r["n"]}; its FID carries '
                   'the larger bias of a smaller N, so it is not ranked as best)' for r in fewer)


def student_sentence(result: dict[str, Any]) -> str:
    """Where the Consistency rows come from, when the sweep has a student."""
    if 'student' not in result:
        return ''
    return (f' Consistency rows: the distilled student {result["student"]} (sha256 {result["student_sha256_16"]}), '
            'distilled from the swept model and sampled unguided (a conditional student learned its guidance).')


def parts_sentence(result: dict[str, Any]) -> str:
    """How a sweep merged from parts (scripts/merge_sweeps.py) was put together, and how far its timings agree."""
    parts = result.get('parts')
    if not parts:
        return ''
    text = (f' Merged from {parts["count"]} sweeps of the same x_T (scripts/merge_sweeps.py): the {parts["shared_rows"]}'
            ' configs more than one ran score the same FID in each')
    if parts['seconds_ratio']:
        low, high = parts['seconds_ratio']
        text += (f'; their s/image in a later part was {low:g}-{high:g}x the first\'s (the same machine type, '
                 'another day), so compare timings within a part')
    return text + '.'


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
    floor = result['calibration'].get(FLOOR, {}).get('fid')
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
    floor = result['calibration'].get(FLOOR, {}).get('fid')
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
