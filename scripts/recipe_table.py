"""The recipe study's table (docs/training.md) from the runs of scripts/recipe_study.sh: one row per candidate,
its settings, training images/s, images seen in the equal wall time, and the scores of its last milestone with
DDIM-50 at eta 0 and at eta 1 (the deterministic and the stochastic sampler; a scoring made before eta 0 was
scored shows "–" there). Candidates are ordered by the mean of the two etas' FID / floor, the export gate's rule.

  python3 scripts/recipe_table.py                       # reads runs/recipe/*, prints markdown
  python3 scripts/recipe_table.py --output docs/recipe_table.md
"""
import argparse

from ddpm_mnist.cli.arguments import ArgumentParser
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
    if d.get('snr_floor') is not None:
        parts.append(f'SNR floor {d["snr_floor"]:g}')
    if t.get('lr_schedule', 'constant') != 'constant' or t.get('lr_warmup_steps'):
        parts.append(f'warm-up {t.get("lr_warmup_steps") or 0}, {t.get("lr_schedule", "constant")}')
    return ', '.join(parts)


def rows(study: Path) -> list[dict[str, Any]]:
    out = []
    for score_file in sorted(Path(study).glob('*-score.json')):
        name = score_file.name[:-len('-score.json')]
        run = Path(study) / name
        score = json.loads(score_file.read_text())
        last_step = max(r['step'] for r in score['rows'])
        by_eta = {float(r.get('eta', 1.0)): r for r in score['rows'] if r['step'] == last_step}
        last = by_eta.get(1.0) or next(iter(by_eta.values()))
        config = json.loads((run / 'config.json').read_text())
        ratios = [r['fid'] / score['floor_fid'] for r in by_eta.values()]
        out.append(dict(name=name, settings=settings_of(config), minutes=last['wall_seconds'] / 60,
                        images_per_s=last['images_seen'] / last['wall_seconds'], floor=score['floor_fid'],
                        images_seen=last['images_seen'], eta0=by_eta.get(0.0), eta1=by_eta.get(1.0),
                        mean_ratio=sum(ratios) / len(ratios)))
    return sorted(out, key=lambda r: r['mean_ratio'])


def fid_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return '–'
    return f'{row["fid"]:.2f} [{row.get("fid_low", float("nan")):.1f}, {row.get("fid_high", float("nan")):.1f}]'


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ['| candidate | settings | minutes | img/s | images seen | floor | DDIM-50 eta 0 FID [95 %] '
             '| DDIM-50 eta 1 FID [95 %] | mean FID / floor | IS (eta 1) | smallest class (eta 1) |', '|' + '---|' * 11]
    for r in table:
        shown = r['eta1'] or r['eta0']
        lines.append(f'| {r["name"]} | {r["settings"]} | {r["minutes"]:.1f} | {r["images_per_s"]:.0f} | '
                     f'{r["images_seen"]:,} | {r["floor"]:.2f} | {fid_cell(r["eta0"])} | {fid_cell(r["eta1"])} | '
                     f'{r["mean_ratio"]:.2f}x | {shown["inception_score"]:.2f} | {100 * shown["min_class_share"]:.1f}% |')
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
