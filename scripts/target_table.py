"""The shipped model against its quality targets (docs/results.md), read from a sweep's comparison.json.

    python3 inference_comparison.py --compare --raw_dir ../shared/data/mnist-full --num_samples 1000 \\
        --compare_steps 10,50 --compare_etas 0,1 --compare_solver_steps 10 --results_folder runs/targets
    python3 scripts/target_table.py runs/targets/inference_pretrained/comparison/comparison.json \\
        --output assets/targets.md

Targets: DDPM-1000 within 1.3x the real-data floor; DDIM-50 with eta 0 at least as good as with eta 1 (the DDIM
paper's ordering; the paired difference says whether the two can be told apart); the best sampler at <= 10 NFE
within 1.5x DDPM-1000; every class 8-12 % of the samples and near-copies of training digits <= 0.5 % in each of
those rows. All rows come from the same x_T (the sweep's seed).
"""
from __future__ import annotations

import argparse

from ddpm_mnist.cli.arguments import ArgumentParser
import json
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]

from ddpm_mnist.evaluation.sweep_tables import FLOOR
from ddpm_mnist.utils import UserError, atomic_path, run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('comparison', help='comparison.json written by inference_comparison.py --compare')
    p.add_argument('--output', default=None, help='also write the table to this markdown file')
    return p.parse_args(argv)


def fid_text(row: dict[str, Any]) -> str:
    low, high = row.get('fid_low'), row.get('fid_high')
    return f'{row["fid"]:.2f}' if low is None else f'{row["fid"]:.2f} [{low:.2f}, {high:.2f}]'


def find_row(rows: dict[str, dict[str, Any]], label: str) -> dict[str, Any]:
    if label not in rows:
        raise UserError(f'the sweep has no "{label}" row; rerun it with the flags in this script\'s --help')
    return rows[label]


def target_rows(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, what was measured, whether it is met) for each target."""
    rows = {r['config']: r for r in result['rows']}
    ddpm = next((r for r in result['rows'] if r['strategy'] == 'ddpm'), None)
    if ddpm is None:
        raise UserError('the sweep has no DDPM row; rerun it with the flags in this script\'s --help')
    # DDPM drawn on fewer x_T (--compare_ddpm_samples) is read against the floor at its own N
    floor = result['calibration'].get(f'{FLOOR}, N = {ddpm.get("n")}', result['calibration'][FLOOR])['fid']
    eta0, eta1 = (find_row(rows, label) for label in ('DDIM 50, eta 0.0', 'DDIM 50, eta 1.0'))
    fast = [r for r in result['rows'] if r['nfe'] <= 10]
    if not fast:
        raise UserError('the sweep has no row at <= 10 NFE; add --compare_solver_steps 10')
    best_fast = min(fast, key=lambda r: r['fid'])
    pair = next((p for p in result.get('pairs', []) if (p['a'], p['b']) == (eta0['config'], eta1['config'])), None)
    pair_text = ('' if pair is None else f'; paired difference {pair["value"]:+.2f} [{pair["low"]:+.2f}, '
                 f'{pair["high"]:+.2f}], {"significant" if pair["differs"] else "not significant"}')
    headline = [ddpm, eta0, eta1, best_fast]
    shares = [s for r in headline for s in r['class_shares']]
    copies = max(r['near_copy_share'] for r in headline)
    return [
        (f'{ddpm["config"]} FID <= 1.3x the real-data floor',
         f'{fid_text(ddpm)} = {ddpm["fid"] / floor:.2f}x the floor {floor:.2f}', ddpm['fid'] <= 1.3 * floor),
        ('DDIM-50: eta 0 at least as good as eta 1',
         f'eta 0 {fid_text(eta0)}, eta 1 {fid_text(eta1)}{pair_text}', eta0['fid'] <= eta1['fid']),
        (f'best sampler at <= 10 NFE: FID <= 1.5x {ddpm["config"]}',
         f'{best_fast["config"]} {fid_text(best_fast)} = {best_fast["fid"] / ddpm["fid"]:.2f}x {ddpm["config"]}',
         best_fast['fid'] <= 1.5 * ddpm['fid']),
        ('every class 8-12 % (the four rows above)',
         f'class shares {min(shares):.1%} to {max(shares):.1%}', min(shares) >= 0.08 and max(shares) <= 0.12),
        ('near-copies of training digits <= 0.5 % (the four rows above)', f'at most {copies:.1%}', copies <= 0.005),
    ]


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
    except (json.JSONDecodeError, KeyError) as err:
        raise UserError(f'{path} is not a comparison.json written by inference_comparison.py --compare ({err})')
    print(table, end='')
    if args.output:
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(table)
        print(f'wrote {args.output}')


if __name__ == '__main__':
    run_cli(main)
