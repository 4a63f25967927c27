"""The training segments behind an exported model, from its JSON's provenance: one row per segment (machine,
minutes, images/s, steps, images seen, command) and the totals — the history of docs/training.md.

  python3 scripts/segments_table.py                                    # ddpm_mnist/pretrained/ddpm_mnist_small.json
  python3 scripts/segments_table.py ddpm_mnist/pretrained/ddpm_mnist_conditional.json
"""
from __future__ import annotations

import argparse

from ddpm_mnist.cli.arguments import ArgumentParser
import json
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]

from ddpm_mnist.utils import UserError, run_cli

EPOCH = 60_000  # the MNIST training split


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('record', nargs='?', default=str(ROOT / 'ddpm_mnist' / 'pretrained' / 'ddpm_mnist_small.json'),
                   help='exported model JSON (default: the shipped model\'s)')
    return p.parse_args(argv)


def segments_table(record: dict[str, Any]) -> str:
    provenance = record.get('provenance')
    if not provenance:
        raise UserError('the record has no provenance; it was not exported by python -m ddpm_mnist.cli.export')
    segments = provenance.get('segments') or [provenance]
    lines = ['| segment | machine | minutes | images/s | steps | images seen | epochs | command |',
             '|---|---|---|---|---|---|---|---|']
    for k, seg in enumerate(segments, 1):
        images, seconds = seg.get('images_seen') or 0, seg.get('wall_seconds') or 0
        machines = ', '.join(seg.get('machines') or ['?'])
        rate = f'{images / seconds:.0f}' if seconds else '?'  # compiling and milestone grids included
        lines.append(f'| {k} | {machines} | {seconds / 60:.0f} | {rate} | {seg.get("steps"):,} | {images:,} | '
                     f'{images / EPOCH:.1f} | `{seg.get("command")}` |')
    total_images = sum(seg.get('images_seen') or 0 for seg in segments)
    total_minutes = sum(seg.get('wall_seconds') or 0 for seg in segments) / 60
    lines.append(f'\nIn all: {total_images:,} images ({total_images / EPOCH:.1f} epochs of the {EPOCH:,} training '
                 f'digits) in {total_minutes:.0f} minutes of training (compiling and milestone grids included).')
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = Path(args.record)
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f'cannot read {path}: {err.strerror or err}; give an exported model\'s .json') from None
    except json.JSONDecodeError as err:
        raise UserError(f'{path} is not JSON ({err}); give an exported model\'s .json') from None
    print(segments_table(record), end='')


if __name__ == '__main__':
    run_cli(main)
