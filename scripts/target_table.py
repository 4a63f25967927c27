"""The shipped model against its quality targets (docs/results.md), read from a sweep's comparison.json.

    python3 inference_comparison.py --compare --raw_dir ../shared/data/mnist-full --num_samples 1000 \\
        --compare_steps 10,50 --compare_etas 0,1 --compare_solver_steps 10 --results_folder runs/targets
    python3 scripts/target_table.py runs/targets/inference_pretrained/comparison/comparison.json \\
        --output assets/targets.md --headline assets/headline.md

Targets: DDPM-1000 within 1.3x the real-data floor; DDIM-50 with eta 0 at least as good as with eta 1 (the DDIM
paper's ordering; the paired difference says whether the two can be told apart); the best sampler at <= 10 NFE
within 1.5x DDPM-1000 (at DDPM's N: on the x_T it drew); every class 8-12 % of the samples and near-copies of
training digits <= 0.5 % in each of those rows. With a distilled student's rows (--compare_student), its targets
against its teacher: 2 steps no worse than the teacher's DDIM-50 eta 0, 1 step within 1.5x of it, 4 steps no worse
than DDIM-50 eta 1, each with the paired difference. All rows come from the same x_T (the sweep's seed).

--headline writes the README's selection of the sweep: DDPM, the best row, and at 50, 20 and 10 NFE DDIM with
eta 1 and eta 0 and the best other sampler, a distilled student's rows, and the floor, each FID also in units of the
real-data floor at that row's own N (FID depends on N, so a row of fewer samples is read against its own floor).
"""
from __future__ import annotations

import argparse

from ddpm_mnist.cli.arguments import ArgumentParser
import json
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]

from ddpm_mnist.evaluation.sweep import STUDENT_TARGETS
from ddpm_mnist.evaluation.sweep_tables import FLOOR
from ddpm_mnist.sampling.registry import SAMPLERS, label
from ddpm_mnist.utils import UserError, atomic_path, run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('comparison', help='comparison.json written by inference_comparison.py --compare')
    p.add_argument('--output', default=None, help='also write the table to this markdown file')
    p.add_argument('--headline', default=None,
                   help='also write the README\'s selection of the sweep (see above) to this markdown file')
    return p.parse_args(argv)


def fid_text(row: dict[str, Any]) -> str:
    low, high = row.get('fid_low'), row.get('fid_high')
    return f'{row["fid"]:.2f}' if low is None else f'{row["fid"]:.2f} [{low:.2f}, {high:.2f}]'


def find_row(rows: dict[str, dict[str, Any]], config: str) -> dict[str, Any]:
    if config not in rows:
        raise UserError(f'the sweep has no "{config}" row; rerun it with the flags in this script\'s --help')
    return rows[config]


def at_ddpm_n(row: dict[str, Any], ddpm: dict[str, Any]) -> tuple[float, str]:
    """`row`'s FID at DDPM's N and how it was read. When DDPM drew fewer x_T (--compare_ddpm_samples), FIDs at the two
    N differ by FID's finite-sample bias, so the row is read on the x_T DDPM drew: DDPM's FID plus the paired
    difference the sweep measured there (FID(row on those x_T) - FID(DDPM))."""
    if row.get('n', 1) == ddpm.get('n', 1) or row.get('fid_minus_ddpm') is None:
        return row['fid'], fid_text(row)
    fid = ddpm['fid'] + row['fid_minus_ddpm']
    return fid, (f'{fid:.2f} on the {ddpm["n"]:,} x_T {ddpm["config"]} drew (paired difference '
                 f'{row["fid_minus_ddpm"]:+.2f} [{row["fid_minus_ddpm_low"]:+.2f}, {row["fid_minus_ddpm_high"]:+.2f}]; '
                 f'{row["fid"]:.2f} at N = {row["n"]:,})')


def target_rows(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, what was measured, whether it is met) for each target."""
    rows = {r['config']: r for r in result['rows']}
    ddpm = next((r for r in result['rows'] if r['strategy'] == 'ddpm'), None)
    if ddpm is None:
        raise UserError('the sweep has no DDPM row; rerun it with the flags in this script\'s --help')
    # DDPM drawn on fewer x_T (--compare_ddpm_samples) is read against the floor at its own N
    floor = floor_at(result, ddpm.get('n'))
    eta0, eta1 = (find_row(rows, label('ddim', 50, eta)) for eta in (0.0, 1.0))
    # the model's own samplers: a distilled student is another model, held to its own targets below
    fast = [r for r in result['rows'] if r['nfe'] <= 10 and not SAMPLERS[r['strategy']].student]
    if not fast:
        raise UserError('the sweep has no row at <= 10 NFE; add --compare_solver_steps 10')
    best_fast = min(fast, key=lambda r: r['fid'])
    fast_fid, fast_text = at_ddpm_n(best_fast, ddpm)
    pair_text = paired_text(result, eta0, eta1)
    headline = [ddpm, eta0, eta1, best_fast]
    shares = [s for r in headline for s in r['class_shares']]
    copies = max(r['near_copy_share'] for r in headline)
    return [
        (f'{ddpm["config"]} FID <= 1.3x the real-data floor',
         f'{fid_text(ddpm)} = {ddpm["fid"] / floor:.2f}x the floor {floor:.2f}', ddpm['fid'] <= 1.3 * floor),
        ('DDIM-50: eta 0 at least as good as eta 1',
         f'eta 0 {fid_text(eta0)}, eta 1 {fid_text(eta1)}{pair_text}', eta0['fid'] <= eta1['fid']),
        (f'best sampler at <= 10 NFE: FID <= 1.5x {ddpm["config"]}',
         f'{best_fast["config"]} {fast_text} = {fast_fid / ddpm["fid"]:.2f}x {ddpm["config"]}',
         fast_fid <= 1.5 * ddpm['fid']),
        ('every class 8-12 % (the four rows above)',
         f'class shares {min(shares):.1%} to {max(shares):.1%}', min(shares) >= 0.08 and max(shares) <= 0.12),
        ('near-copies of training digits <= 0.5 % (the four rows above)', f'at most {copies:.1%}', copies <= 0.005),
    ] + student_target_rows(result, rows, eta0, eta1)


def paired_text(result: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str:
    """'; paired difference +x [lo, hi], significant' for rows a and b when the sweep paired them, else ''."""
    pair = next((p for p in result.get('pairs', []) if (p['a'], p['b']) == (a['config'], b['config'])), None)
    return ('' if pair is None else f'; paired difference {pair["value"]:+.2f} [{pair["low"]:+.2f}, '
            f'{pair["high"]:+.2f}], {"significant" if pair["differs"] else "not significant"}')


def student_target_rows(result: dict[str, Any], rows: dict[str, dict[str, Any]], eta0: dict[str, Any],
                        eta1: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The distilled student's targets against its teacher, for the student rows the sweep holds."""
    teacher = {0.0: eta0, 1.0: eta1}
    out = []
    for steps, eta, factor in STUDENT_TARGETS:
        student = rows.get(label('consistency', steps))
        if student is None:
            continue
        bound = teacher[eta]
        scale = '' if factor == 1 else f'{factor:g}x '
        out.append((f'student at {steps} NFE: FID <= {scale}the teacher\'s DDIM-50 eta {eta:g}',
                    f'{fid_text(student)} against {scale}{fid_text(bound)} = {student["fid"] / bound["fid"]:.2f}x'
                    f'{paired_text(result, student, bound)}', student['fid'] <= factor * bound['fid']))
    return out


HEADLINE_NFE = (50, 20, 10)  # the step counts the README compares samplers at


def floor_at(result: dict[str, Any], n: int | None) -> float:
    """The real-data floor's FID at N = n (the sweep's own N when it has no row for n)."""
    calibration = result['calibration']
    return calibration.get(f'{FLOOR}, N = {n}', calibration[FLOOR])['fid']


def headline_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """DDPM; the best row; at each HEADLINE_NFE, DDIM at eta 1 and eta 0 and the best other sampler; every student
    row. DDPM first, then by NFE (most first) and FID."""
    rows = result['rows']
    picked = [r for r in rows if SAMPLERS[r['strategy']].all_steps or r.get('is_best')
              or SAMPLERS[r['strategy']].student]
    for nfe in HEADLINE_NFE:
        at_nfe = [r for r in rows if r['nfe'] == nfe and not SAMPLERS[r['strategy']].all_steps]
        picked += [r for r in at_nfe if r['strategy'] == 'ddim' and r['eta'] in (0.0, 1.0)]
        others = [r for r in at_nfe if r['strategy'] != 'ddim' and not SAMPLERS[r['strategy']].student]
        picked += [min(others, key=lambda r: r['fid'])] if others else []
    unique = list({r['config']: r for r in picked}.values())
    return sorted(unique, key=lambda r: (not SAMPLERS[r['strategy']].all_steps, -r['nfe'], r['fid']))


def sampler_cell(row: dict[str, Any]) -> str:
    label = SAMPLERS[row['strategy']].label
    return f'{label}, eta {row["eta"]:g}' if SAMPLERS[row['strategy']].uses_eta else label


def headline_table(result: dict[str, Any]) -> str:
    lines = ['| sampler | NFE | N | s/image | FID [95 %] ↓ | FID / floor at its N ↓ | IS ↑ |',
             '|---|---|---|---|---|---|---|']
    for r in headline_rows(result):
        n = r.get('n', result['num_samples'])
        best = ' (best)' if r.get('is_best') else ''
        lines.append(f'| {sampler_cell(r)}{best} | {r["nfe"]} | {n:,} | {r["seconds_per_image"]:.4f} | {fid_text(r)} '
                     f'| {r["fid"] / floor_at(result, n):.2f}x | {r["inception_score"]:.2f} |')
    floor = result['calibration'][FLOOR]
    lines.append(f'| *real training digits (floor)* | – | {result["num_samples"]:,} | – | {fid_text(floor)} | 1x '
                 f'| {floor["inception_score"]:.2f} |')
    return '\n'.join(lines) + '\n'


def target_table(result: dict[str, Any]) -> str:
    seconds = sum(r['seconds'] for r in result['rows'])
    lines = [f'N = {result["num_samples"]} per configuration, seed {result["seed"]} (the same x_T in every row), '
             f'{result["precision"]}, on {result["machine"]}; sampling took {seconds / 60:.0f} minutes in all; '
             f'checkpoint {result["checkpoint"]} ({result["checkpoint_sha256_16"]}).', '',
             '| target | measured | met |', '|---|---|---|']
    lines += [f'| {target} | {measured} | {"yes" if met else "**no**"} |' for target, measured, met in
              target_rows(result)]
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = Path(args.comparison)
    if not path.is_file():
        raise UserError(f'{path} does not exist; run the sweep first (see --help)')
    try:
        result = json.loads(path.read_text())
        table = target_table(result)
        headline = headline_table(result) if args.headline else None
    except (json.JSONDecodeError, KeyError) as err:
        raise UserError(f'{path} is not a comparison.json written by inference_comparison.py --compare ({err})')
    print(table, end='')
    if args.output:
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(table)
        print(f'wrote {args.output}')
    if args.headline:
        with atomic_path(args.headline) as tmp:
            Path(tmp).write_text(headline)
        print(f'wrote {args.headline}')


if __name__ == '__main__':
    run_cli(main)
