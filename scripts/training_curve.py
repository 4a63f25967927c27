"""Quality over training: score every milestone of a run and draw FID against images seen.

Each milestone's EMA weights sample N images with one cheap sampler (default DDIM-50, eta 1; same x_T for every
milestone), scored with the project metrics against the MNIST test split; the real-data floor at the same N is
drawn. Scores are cached in the run folder, so a rerun after more milestones only scores the new ones.

  python3 scripts/training_curve.py --results_folder runs/shipped60k --raw_dir ../shared/data/mnist-full
"""
import argparse
from typing import Sequence
from pathlib import Path


from ddpm_mnist.settings import add_mnist_args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--results_folder', required=True, help='training run folder holding model-N.pt milestones')
    add_mnist_args(p)
    p.add_argument('--num_samples', type=int, default=500, help='images per milestone (default: %(default)s)')
    p.add_argument('--sample_steps', type=int, default=50, help='DDIM steps (default: %(default)s)')
    p.add_argument('--ddim_eta', type=float, default=1.0, help='DDIM eta (default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='seed of x_T and the per-step noise (default: %(default)s)')
    p.add_argument('--batch_size', type=int, default=100, help='images per forward pass (default: %(default)s)')
    p.add_argument('--reference_size', type=int, default=None,
                   help='score against the test digits resampled as for a model trained at this size (28: the raw '
                        'digits) instead of the run\'s own image size, to compare runs of different sizes on one '
                        'reference (default: the run\'s size)')
    p.add_argument('--milestones', default='all',
                   help='all, last, every:K (every K-th milestone and the last: a long run scored in '
                        'bounded time) or comma-separated milestone numbers to score (default: %(default)s)')
    p.add_argument('--output', default='assets/training_curve',
                   help='output stem: writes STEM.png, STEM.csv, STEM.md and STEM.json (default: %(default)s)')
    args = p.parse_args(argv)
    from ddpm_mnist.validation import at_least, check_flags
    check_flags(vars(args), extra={'num_samples': at_least(10)})
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.classifier import WEIGHTS
    from ddpm_mnist.utils import file_digest, read_json
    from ddpm_mnist.curve import CurveSettings, score_run, with_earlier_segments, write_curve
    from ddpm_mnist.data import load_split
    from ddpm_mnist.metrics import Evaluator
    from ddpm_mnist.device import keep_freed_memory, pick_device
    from ddpm_mnist.sampling import default_precision
    from ddpm_mnist.run_folder import read_config
    device = pick_device('auto')
    if device.type == 'cpu':
        keep_freed_memory()
    reference, _ = load_split('test', args.raw_dir, args.data_root)
    train, _ = load_split('train', args.raw_dir, args.data_root)
    config = read_config(args.results_folder)
    image_size = args.reference_size or (config['diffusion']['image_size'] if config else 32)
    evaluator = Evaluator(reference, train, image_size=image_size, seed=args.seed)
    settings = CurveSettings(steps=args.sample_steps, eta=args.ddim_eta, num_samples=args.num_samples,
                             seed=args.seed, batch_size=args.batch_size, precision=default_precision(device))
    rows = score_run(args.results_folder, evaluator, settings, classifier_digest=file_digest(WEIGHTS),
                     device=device, which=args.milestones)
    floor = evaluator.score(evaluator.floor_images(args.num_samples))['fid']
    recorded = dict(settings._asdict(), classifier=file_digest(WEIGHTS), image_size=image_size,
                    training_digits=len(train))
    previous = Path(args.output).with_suffix('.json')
    if previous.is_file() and read_json(previous).get('settings') == recorded:
        rows = with_earlier_segments(rows, read_json(previous)['rows'])
    title = (f'{Path(args.results_folder).name}: DDIM-{args.sample_steps}, eta {args.ddim_eta}, N = '
             f'{args.num_samples}, seed {args.seed}, {len(train):,} training digits, {image_size} px')
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_curve(rows, floor, args.output, title=title, settings=recorded)
    print(Path(args.output).with_suffix('.md').read_text())
    print(f'wrote {args.output}.png, .csv, .md and .json')


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
