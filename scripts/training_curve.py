"""Quality over training: score every milestone of a run and draw FID against images seen.

Each milestone's EMA weights sample N images with DDIM-50 at each eta asked for (default 0 and 1: the
deterministic sampler and the stochastic one, since a recipe can help one and hurt the other; a distilled student's
run with its consistency sampler at each of --student_steps instead; same x_T for every milestone), scored with the
project metrics against the MNIST test split; the real-data floor at the same N is drawn. Scores are cached in the
run folder, so a rerun after more milestones only scores the new ones.

  python3 scripts/training_curve.py --results_folder runs/shipped60k --raw_dir ../shared/data/mnist-full
"""
import argparse
from typing import Sequence
from pathlib import Path


from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args
from ddpm_mnist.settings import RULES, at_least, comma_floats, comma_ints, each


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting(p, 'results_folder', required=True, help='training run folder holding model-N.pt milestones')
    add_mnist_args(p)
    add_setting(p, 'num_samples', rule=at_least(10), default=500, help='images per milestone (default: %(default)s)')
    add_setting(p, 'sample_steps', default=50, help='DDIM steps (default: %(default)s)')
    add_setting(p, 'ddim_eta', rule=RULES['compare_etas'], type=comma_floats, default=[0.0, 1.0],
                help='comma-separated DDIM etas, each scored at every milestone (default: 0,1)')
    add_setting(p, 'student_steps', rule=each(at_least(1)), type=comma_ints, default=[1, 2, 4],
                help='a distilled student\'s run: comma-separated consistency step counts, each scored at every '
                     'milestone (default: 1,2,4)')
    add_setting(p, 'seed', default=0, help='seed of x_T and the per-step noise (default: %(default)s)')
    add_setting(p, 'batch_size', default=100, help='images per forward pass (default: %(default)s)')
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
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.evaluation.classifier import WEIGHTS
    from ddpm_mnist.utils import file_digest, read_json
    from ddpm_mnist.evaluation.curve import CurveSettings, score_run, with_earlier_segments, write_curve
    from ddpm_mnist.evaluation.reference import digits_evaluator, floor_fid
    from ddpm_mnist.runtime import keep_freed_memory, pick_device
    from ddpm_mnist.sampling.loop import default_precision
    from ddpm_mnist.training.run_folder import read_config
    device = pick_device('auto')
    if device.type == 'cpu':
        keep_freed_memory()
    config = read_config(args.results_folder)
    image_size = args.reference_size or (config['diffusion']['image_size'] if config else 32)
    evaluator = digits_evaluator(image_size=image_size, raw_dir=args.raw_dir, data_root=args.data_root, seed=args.seed)
    rows, student = [], bool((config or {}).get('student'))
    common = dict(num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size,
                  precision=default_precision(device))
    curves = ([CurveSettings(steps=steps, eta=None, strategy='consistency', **common) for steps in args.student_steps]
              if student else [CurveSettings(steps=args.sample_steps, eta=eta, **common) for eta in args.ddim_eta])
    for settings in curves:
        rows += score_run(args.results_folder, evaluator, settings, classifier_digest=file_digest(WEIGHTS),
                          device=device, which=args.milestones)
    floor = floor_fid(evaluator, args.num_samples)
    recorded = dict(settings._asdict(), eta=None if student else args.ddim_eta, classifier=file_digest(WEIGHTS),
                    image_size=image_size, training_digits=evaluator.train_count)
    if student:
        recorded['steps'] = args.student_steps
    else:
        del recorded['strategy']  # as curves recorded their settings before students had curves
    previous = Path(args.output).with_suffix('.json')
    if previous.is_file() and read_json(previous).get('settings') == recorded:
        rows = with_earlier_segments(rows, read_json(previous)['rows'])
    samplers = (f'consistency, {",".join(map(str, args.student_steps))} steps' if student else
                f'DDIM-{args.sample_steps}, eta {",".join(f"{eta:g}" for eta in args.ddim_eta)}')
    title = (f'{Path(args.results_folder).name}: {samplers}, N = '
             f'{args.num_samples}, seed {args.seed}, {evaluator.train_count:,} training digits, {image_size} px')
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_curve(rows, floor, args.output, title=title, settings=recorded)
    print(Path(args.output).with_suffix('.md').read_text())
    print(f'wrote {args.output}.png, .csv, .md and .json')


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
