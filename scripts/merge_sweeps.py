"""One sweep from parts: sweeps of the same model and x_T (same seed, N, precision, batch, machine) run at different
times, each a comparison.json, written as one comparison.{json,csv,md,png}. A config that two parts both ran must
score the same FID in each, else nothing is written; the first part's row is kept. For the README's sweep with a
student's rows added later (the first part the full sweep, the second its DDIM-50, UniPC-50 and student rows):

    python3 inference_comparison.py --compare --raw_dir ../shared/data/mnist-full --num_samples 10000 \\
        --compare_ddpm_samples 1000 --compare_samplers ddpm,ddim,unipc --compare_steps 10,50 --compare_etas 0,1 \\
        --compare_solver_steps 50 --compare_student --results_folder runs/figures/headline
    python3 scripts/merge_sweeps.py assets/comparison.json \\
        runs/figures/headline/inference_pretrained/comparison/comparison.json --output_dir assets
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from ddpm_mnist.cli.arguments import ArgumentParser
from ddpm_mnist.evaluation.sweep import merge_results
from ddpm_mnist.evaluation.sweep_tables import write_outputs
from ddpm_mnist.utils import UserError, run_cli


def read_result(path: str) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f'cannot read the sweep {path} ({err}); give a comparison.json a sweep wrote')
    if not isinstance(result, dict) or not isinstance(result.get('rows'), list):
        raise UserError(f'{path} is not a sweep\'s comparison.json (no rows); give one inference_comparison.py '
                        '--compare wrote')
    return result


def main(argv: Sequence[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('sweeps', nargs='+', help='comparison.json files, the first part first')
    p.add_argument('--output_dir', required=True, help='folder for the merged comparison.{json,csv,md,png}')
    args = p.parse_args(argv)
    result = merge_results([read_result(path) for path in args.sweeps])
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_outputs(result, args.output_dir)
    print(f'wrote {args.output_dir}/comparison.* with {len(result["rows"])} configs from {len(args.sweeps)} sweeps')


if __name__ == '__main__':
    run_cli(main)
