"""The recipe study's table (docs/training.md) from the runs of scripts/recipe_study.sh: one row per candidate,
its settings, training images/s, images seen in the equal wall time, and the scores of its last milestone.

  python3 scripts/recipe_table.py                       # reads runs/recipe/*, prints markdown
  python3 scripts/recipe_table.py --output docs/recipe_table.md
"""
import argparse

from ddpm_mnist.settings import ArgumentParser
from typing import Any, Sequence
import json
import sys
from pathlib import Path



def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--study', default='runs/recipe', help='folder of the study runs (default: %(default)s)')
    p.add_argument('--output', default=None, help='also write the table to this markdown file')
    return p.parse_args(argv)


def settings_of(config: dict[str, Any]) -> str:
    m, d, t = config['model'], config['diffusion'], config['training']
    parts = [f'{d["image_size"]} px', f'attention {m.get("attention", "library")}', f'dim {m["dim"]}',
             d['objective'], f'batch {t["train_batch_size"]}', f'lr {t["train_lr"]:g}']
    if d.get('min_snr_gamma') is not None:
        parts.append(f'min-SNR {d["min_snr_gamma"]:g}')
    if t.get('lr_schedule', 'constant') != 'constant' or t.get('lr_warmup_steps'):
        parts.append(f'warm-up {t.get("lr_warmup_steps") or 0}, {t.get("lr_schedule", "constant")}')
    return ', '.join(parts)


def rows(study: Path) -> list[dict[str, Any]]:
    out = []
    for score_file in sorted(Path(study).glob('*-score.json')):
        name = score_file.name[:-len('-score.json')]
        run = Path(study) / name
        score = json.loads(score_file.read_text())
        last = score['rows'][-1]
        config = json.loads((run / 'config.json').read_text())
        minutes = last['wall_seconds'] / 60
        out.append(dict(name=name, settings=settings_of(config), minutes=minutes,
                        images_per_s=last['images_seen'] / last['wall_seconds'], floor=score['floor_fid'], **last))
    return sorted(out, key=lambda r: r['fid'])


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ['| candidate | settings | minutes | img/s | images seen | FID [95 % interval] | floor | FID / floor | IS '
             '| confidence | smallest class |', '|' + '---|' * 11]
    lines += [f'| {r["name"]} | {r["settings"]} | {r["minutes"]:.1f} | {r["images_per_s"]:.0f} | '
              f'{r["images_seen"]:,} | {r["fid"]:.2f} [{r.get("fid_low", float("nan")):.1f}, '
              f'{r.get("fid_high", float("nan")):.1f}] | {r["floor"]:.2f} | {r["fid"] / r["floor"]:.2f}x | '
              f'{r["inception_score"]:.2f} | {r["confidence"]:.3f} | {100 * r["min_class_share"]:.1f}% |'
              for r in table]
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    table = rows(args.study)
    if not table:
        sys.exit(f'error: no scored runs in {args.study}; run bash scripts/recipe_study.sh first')
    text = markdown(table)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == '__main__':
    main()
