"""Peak memory of real training runs at several batch sizes: what the memory warning of train_ddpm_mnist.py
(ddpm_mnist.training.command.step_bytes) estimates, measured, and the constants fitted to the measurements.

Not a test: run it alone (it starts one training process per row), e.g.
    python benchmarks/bench_memory.py --data_folder data/mnist5k
Each row is `train_ddpm_mnist.py` for a few steps in a fresh process (compiled as CPU training is by default),
its peak resident memory read from the kernel (wait4's ru_maxrss). Writes benchmarks/results/bench_memory_cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from ddpm_mnist.cli.arguments import ArgumentParser
from ddpm_mnist.settings import PRESETS
from ddpm_mnist.training.command import (BYTES_PER_ACTIVATION_UNIT, FIXED_STEP_BYTES, activation_units, step_bytes)
from ddpm_mnist.utils import write_json

# name -> (preset, flags, model settings for activation_units)
RECIPES = {
    'shipped (28 px, lowest attention, dim 32)': ('shipped', ['--image_size', '28', '--attention', 'lowest'],
                                                  dict(image_size=28)),
    'small (32 px, library attention, dim 32)': ('small', [], {}),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data_folder', default='data/mnist5k', help='PNG folder made by get_mnist_data.py '
                   '(default: %(default)s)')
    p.add_argument('--batch_sizes', default='32,128,256', help='comma-separated batch sizes (default: %(default)s)')
    p.add_argument('--steps', type=int, default=4, help='training steps per row (default: %(default)s)')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'bench_memory_cpu'),
                   help='output path without suffix (default: benchmarks/results/bench_memory_cpu)')
    return p.parse_args(argv)


def config_of(preset: str, diffusion: dict[str, Any]) -> dict[str, Any]:
    """The settings activation_units reads, for a preset with the recipe's changes."""
    config = json.loads(json.dumps(PRESETS[preset]))
    config['diffusion'].update(diffusion)
    return config


def peak_rss(argv: list[str]) -> int:
    """Peak resident bytes of one training process (the kernel's count for that child alone)."""
    process = subprocess.Popen([sys.executable, str(ROOT / 'train_ddpm_mnist.py'), *argv], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    error = process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f'error: training run failed: {error.strip().splitlines()[-1] if error.strip() else status}')
    return usage.ru_maxrss * 1024


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name, (preset, flags, diffusion) in RECIPES.items():
        config = config_of(preset, diffusion)
        for batch in map(int, args.batch_sizes.split(',')):
            with tempfile.TemporaryDirectory() as folder:
                argv = ['--preset', preset, *flags, '--data_folder', args.data_folder, '--results_folder', folder,
                        '--train_batch_size', str(batch), '--train_num_steps', str(args.steps),
                        '--save_and_sample_every', str(10 * args.steps), '--device', 'cpu', '--seed', '0']
                peak = peak_rss(argv)
            rows.append(dict(recipe=name, batch=batch, units=activation_units(config), peak_bytes=peak,
                             estimate_bytes=step_bytes(config, batch)))
            estimate = rows[-1]['estimate_bytes']
            print(f'{name}, batch {batch}: peak {peak / 1e9:.2f} GB, estimate {estimate / 1e9:.2f} GB', flush=True)
    return rows


def fit(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """peak = fixed + per_unit x activation units x batch, least squares over every row."""
    x = np.array([r['units'] * r['batch'] for r in rows], dtype=float)
    y = np.array([r['peak_bytes'] for r in rows], dtype=float)
    per_unit, fixed = np.polyfit(x, y, 1)
    return float(fixed), float(per_unit)


def markdown(rows: list[dict[str, Any]], fixed: float, per_unit: float) -> str:
    lines = [f'Peak resident memory of `train_ddpm_mnist.py` ({rows[0]["steps"]} steps, compiled, bf16 autocast where '
             'the CPU has it), `python benchmarks/bench_memory.py`.', '',
             f'Constants in use: fixed {FIXED_STEP_BYTES / 1e9:.2f} GB + {BYTES_PER_ACTIVATION_UNIT} bytes per '
             f'activation unit per image. Fitted here: fixed {fixed / 1e9:.2f} GB + {per_unit:.0f} bytes.', '',
             '| recipe | batch | activation units | peak | estimate | estimate / peak | fitted / peak |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        fitted = fixed + per_unit * r['units'] * r['batch']
        lines.append(f'| {r["recipe"]} | {r["batch"]} | {r["units"]:,} | {r["peak_bytes"] / 1e9:.2f} GB | '
                     f'{r["estimate_bytes"] / 1e9:.2f} GB | {r["estimate_bytes"] / r["peak_bytes"]:.2f} | '
                     f'{fitted / r["peak_bytes"]:.2f} |')
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.runtime import machine_name
    import torch
    rows = [dict(r, steps=args.steps) for r in measure(args)]
    fixed, per_unit = fit(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix('.json'), dict(machine=machine_name(torch.device('cpu')), rows=rows,
                                              fitted=dict(fixed_bytes=fixed, bytes_per_unit=per_unit)))
    text = markdown(rows, fixed, per_unit)
    out.with_suffix('.md').write_text(text)
    print(text)


if __name__ == '__main__':
    main()
