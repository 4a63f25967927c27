"""Choose the EMA length after training: synthesise EMA weights of several lengths from the PostHocEMA snapshots a
run kept (train_ddpm_mnist.py --post_hoc_ema_every N; ema-pytorch's PostHocEMA, Karras et al. 2024, Algorithm 3),
score each like the training curve (DDIM-50 at eta 0 and at eta 1, N images, seed 0, the same x_T), beside the
run's own EMA (the library's EMA of --ema_decay) at its last milestone. Both etas, because an EMA length can help
the stochastic sampler and hurt the deterministic one (docs/training.md); the table shows each.

  python3 scripts/post_hoc_ema.py --results_folder runs/recipe/lean_phema --raw_dir ../shared/data/mnist-full
Writes RESULTS/post_hoc_ema/synth-<sigma_rel>.{safetensors,json} and prints (and writes, with --output) a table.
"""
import argparse
from typing import Sequence
from pathlib import Path


from ddpm_mnist.settings import at_least
from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting(p, 'results_folder', required=True, help='run folder with post_hoc_ema/ snapshots and milestones')
    add_mnist_args(p)
    p.add_argument('--sigma_rels', default='0.05,0.10,0.15,0.20,0.28',
                   help='EMA lengths to synthesise, as sigma_rel (the EMA profile width relative to training time)')
    add_setting(p, 'num_samples', rule=at_least(10), default=500, help='images per model (default: %(default)s)')
    p.add_argument('--output', default=None, help='also write the table to this markdown file')
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import copy

    from ema_pytorch import PostHocEMA
    from safetensors.torch import save_file

    from ddpm_mnist.model.checkpoints import images_seen, load_checkpoint
    from ddpm_mnist.evaluation.curve import CurveSettings, score_milestone
    from ddpm_mnist.evaluation.intervals import interval_cell
    from ddpm_mnist.runtime import pick_device
    from ddpm_mnist.evaluation.reference import digits_evaluator
    from ddpm_mnist.model.network import build_diffusion
    from ddpm_mnist.training.run_folder import milestone_path, milestones, read_config
    from ddpm_mnist.sampling.loop import default_precision
    from ddpm_mnist.sampling.registry import resolve_steps
    from ddpm_mnist.training.trainer import POST_HOC_SIGMA_RELS, post_hoc_folder
    from ddpm_mnist.utils import UserError, atomic_path, write_json

    folder = Path(args.results_folder)
    snapshots = post_hoc_folder(folder)
    config = read_config(folder)
    if config is None or not snapshots.is_dir() or not list(snapshots.glob('*.pt')):
        raise UserError(f'{folder} has no PostHocEMA snapshots; train with --post_hoc_ema_every N first')
    last = milestone_path(folder, milestones(folder)[-1])
    ckpt = load_checkpoint(last)
    post_hoc = PostHocEMA(build_diffusion(config), sigma_rels=POST_HOC_SIGMA_RELS, update_every=10,
                          checkpoint_every_num_steps='manual', checkpoint_folder=str(snapshots))
    evaluator = digits_evaluator(image_size=config['diffusion']['image_size'], raw_dir=args.raw_dir,
                                 data_root=args.data_root)
    steps = resolve_steps('ddim', None, config['diffusion']['timesteps'])  # DDIM-50, or all T of a shorter chain
    precision = default_precision(pick_device('auto'))
    curve = {eta: CurveSettings(steps=steps, eta=eta, num_samples=args.num_samples, seed=0, batch_size=100,
                                precision=precision) for eta in (0.0, 1.0)}

    def scored(name: str, path: Path) -> dict:
        return dict(ema=name, scores={eta: score_milestone(path, evaluator, settings) for eta, settings in curve.items()})

    rows = [scored(f'library EMA, decay {config["training"]["ema_decay"]}', last)]
    for sigma_rel in map(float, args.sigma_rels.split(',')):
        synthesised = post_hoc.synthesize_ema_model(sigma_rel=sigma_rel)
        name = f'synth-{sigma_rel:.2f}'  # not with_suffix: it would cut at the decimal point
        weights, record = snapshots / f'{name}.safetensors', snapshots / f'{name}.json'
        with atomic_path(weights) as tmp:
            save_file({k: v.contiguous() for k, v in synthesised.ema_model.model.state_dict().items()}, str(tmp))
        write_json(record, dict(copy.deepcopy(config), post_hoc_ema=dict(
            sigma_rel=sigma_rel, step=ckpt['step'], images_seen=images_seen(ckpt, config))))
        rows.append(scored(f'post-hoc, sigma_rel {sigma_rel:.2f}', weights))
        eta0, eta1 = rows[-1]['scores'][0.0], rows[-1]['scores'][1.0]
        print(f'{rows[-1]["ema"]}: FID eta 0 {eta0["fid"]:.2f}, eta 1 {eta1["fid"]:.2f}', flush=True)
    lines = [f'{folder.name}, step {ckpt["step"]}: DDIM-{steps}, N = {args.num_samples}, seed 0', '',
             '| EMA | eta 0 FID [95 %] | eta 1 FID [95 %] | eta 0 / eta 1 | smallest class (eta 0, eta 1) |',
             '|---|---|---|---|---|']
    for r in rows:
        eta0, eta1 = r['scores'][0.0], r['scores'][1.0]
        lines.append(f'| {r["ema"]} | {interval_cell(eta0, "fid")} | {interval_cell(eta1, "fid")} | '
                     f'{eta0["fid"] / eta1["fid"]:.2f} | {100 * eta0["min_class_share"]:.1f} %, '
                     f'{100 * eta1["min_class_share"]:.1f} % |')
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
