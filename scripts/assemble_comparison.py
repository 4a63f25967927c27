"""Write comparison.{json,csv,md,png} from a sweep's per-config cache, for a sweep that was cut off
(e.g. by a time limit on a borrowed GPU) after some configs finished. Calibration rows are recomputed
here; they do not depend on the device. For a GPU sweep whose cache came back in comparison_gpu.tgz:

    mkdir -p runs/assemble && tar xzf comparison_gpu.tgz -C runs/assemble --strip-components 1
    python3 scripts/assemble_comparison.py runs/assemble --raw_dir ../shared/data/mnist-full \
        --machine "NVIDIA H100 80GB HBM3" --device cuda --precision bf16 --batch_size 1000
    cp runs/assemble/comparison.{json,csv,md,png} assets/

Configs missing from the cache are listed and left out of the table. To join a finished sweep with one run
later on the same x_T (a student's rows, say), use scripts/merge_sweeps.py instead.
"""
import argparse
from typing import Sequence
import json
from pathlib import Path

from ddpm_mnist.api import load_model
from ddpm_mnist.evaluation.reference import digits_evaluator
from ddpm_mnist.evaluation.sweep import DEFAULT_ETAS, DEFAULT_SOLVER_STEPS, DEFAULT_STEPS, sweep_configs
from ddpm_mnist.evaluation.sweep_tables import write_outputs
from ddpm_mnist.sampling.registry import DIFFUSION_SAMPLERS
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_raw_dir_arg
from ddpm_mnist.utils import file_digest, run_cli


def main(argv: Sequence[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', help='the sweep folder holding cache/ and grids/')
    p.add_argument('--checkpoint', default='ddpm_mnist/pretrained/ddpm_mnist_small.safetensors',
                   help='checkpoint swept')
    add_raw_dir_arg(p, 'MNIST IDX folder (offline); default: torchvision download')
    p.add_argument('--machine', required=True, help='the machine the sweep ran on, as it should be named')
    p.add_argument('--device', default='cuda', help='device the sweep ran on')
    p.add_argument('--precision', default='bf16', help='precision the sweep ran with')
    add_setting(p, 'batch_size', default=1000, help='batch size the sweep ran with')
    add_setting(p, 'seed', default=0, help='seed the sweep ran with')
    args = p.parse_args(argv)
    folder = Path(args.folder)
    rows = {}
    for path in (folder / 'cache').glob('*.json'):
        row = json.loads(path.read_text())
        if 'config' in row:
            rows[row['config']] = row
    order = [c.label for c in sweep_configs(DIFFUSION_SAMPLERS, steps=DEFAULT_STEPS, etas=DEFAULT_ETAS,
                                                    solver_steps=DEFAULT_SOLVER_STEPS, total_timesteps=1000)]
    n = max(r['n'] for r in rows.values())  # the sweep's N (a DDPM row may hold fewer: --compare_ddpm_samples)
    size = load_model(args.checkpoint, device='cpu', precision='fp32').diffusion.image_size[0]  # scored at its size
    evaluator = digits_evaluator(image_size=size, raw_dir=args.raw_dir, seed=args.seed)
    result = dict(checkpoint=args.checkpoint, checkpoint_sha256_16=file_digest(args.checkpoint), machine=args.machine,
                  device=args.device, precision=args.precision, num_samples=n, batch_size=args.batch_size,
                  seed=args.seed, reference_images=evaluator.reference_count, train_images=evaluator.train_count,
                  rows=[rows[k] for k in order if k in rows], missing=[k for k in order if k not in rows],
                  calibration=evaluator.calibration(n),
                  note='assembled by scripts/assemble_comparison.py from the per-config cache of a sweep that '
                       'was cut off; calibration recomputed on this machine')
    write_outputs(result, folder)
    print(f'wrote {folder}/comparison.* from {len(result["rows"])} configs; missing: {result["missing"] or "none"}')


if __name__ == '__main__':
    run_cli(main)
