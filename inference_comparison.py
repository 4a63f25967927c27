"""Sample a trained DDPM with DDPM (ancestral, T steps) or DDIM (S steps), time it and save an image grid.

Examples:
  python3 inference_comparison.py --strategy ddpm --milestone 10
  python3 inference_comparison.py --strategy ddim --milestone 10 --sample_steps 100
  python3 inference_comparison.py --strategy ddim --checkpoint path/to/model-3.pt --ddim_eta 0.5
Without --milestone or --checkpoint the shipped pretrained model is used.
"""
import argparse
from pathlib import Path

from ddpm_mnist.model import add_model_args
from ddpm_mnist.utils import UserError, run_cli, warn
from ddpm_mnist.validation import check_flags

SHIPPED = Path(__file__).resolve().parent / 'pretrained' / 'ddpm_mnist_small.safetensors'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--strategy', choices=['ddpm', 'ddim'], default='ddpm',
                   help='ddpm: ancestral sampling over all T steps; ddim: deterministic (eta=0) or stochastic '
                        'sampling over S steps (default: %(default)s)')
    p.add_argument('--milestone', type=int, help='load model-N.pt from --results_folder')
    p.add_argument('--checkpoint', help='load this file instead (model-N.pt of any denoising-diffusion-pytorch '
                                        'Trainer, or a .safetensors export)')
    p.add_argument('--results_folder', default='./results_mnist_ddpm',
                   help='training results folder; grids go to RESULTS_FOLDER/inference_milestone_N/STRATEGY/ '
                        '(default: %(default)s)')
    p.add_argument('--sample_steps', type=int,
                   help='sampling steps S (default: T for ddpm, 50 for ddim; ddim allows 1..T)')
    p.add_argument('--ddim_eta', type=float, default=0.0,
                   help='DDIM noise: 0 = deterministic DDIM, 1 = DDPM-like (default: %(default)s)')
    p.add_argument('--num_samples', type=int,
                   help='number of images to generate (default: 25; with --compare 1000 per config, --quick 36)')
    p.add_argument('--batch_size', type=int,
                   help='images per forward pass (default: 100 on a CPU, 500 on a GPU)')
    p.add_argument('--seed', type=int, default=0,
                   help='seed for the initial noise and per-step noise; the same seed gives DDPM and DDIM the '
                        'same starting noise (default: %(default)s)')
    p.add_argument('--device', default='auto', help='auto (CUDA, then MPS, then CPU), cuda, mps or cpu')
    p.add_argument('--precision', choices=['auto', 'fp32', 'bf16', 'fp16'], default='auto',
                   help='precision of the Unet: bf16 runs it with bf16 weights, fp16 under autocast (CUDA only); '
                        'auto = bf16 on CPUs with native bf16, else fp32 (measured fastest; see README "Speed") '
                        '(default: %(default)s)')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                   help='channels_last memory layout for the Unet (faster convolutions) (default: on)')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the Unet (first calls take 30-45 s; no faster for bf16 on a 2-core CPU, '
                        'see README "Speed"; untested on GPU)')
    p.add_argument('--use_online_weights', action='store_true',
                   help='sample the raw online weights instead of the EMA weights (worse; for debugging)')
    add_model_args(p)
    c = p.add_argument_group('comparison sweep (--compare)')
    c.add_argument('--compare', action='store_true',
                   help='run DDPM and DDIM at every --compare_steps x --compare_etas from the same noise, score '
                        'them and write comparison.{json,csv,md,png} plus one grid per config')
    c.add_argument('--quick', action='store_true',
                   help='a CPU-sized --compare: DDPM, DDIM S in {10, 50} x eta in {0, 1}, 36 images each')
    c.add_argument('--compare_steps', type=lambda s: [int(x) for x in s.split(',')],
                   help='comma-separated DDIM step counts (default: 10,20,50,100,200,1000)')
    c.add_argument('--compare_etas', type=lambda s: [float(x) for x in s.split(',')],
                   help='comma-separated DDIM eta values (default: 0,0.5,1)')
    c.add_argument('--compare_ddpm', action=argparse.BooleanOptionalAction, default=True,
                   help='include the DDPM (T steps) row; --no-compare_ddpm for DDIM-only sweeps (default: on)')
    c.add_argument('--raw_dir', '--raw-dir', dest='raw_dir',
                   help='MNIST IDX folder for the reference (test split) and training digits, offline '
                        '(e.g. ../shared/data/mnist); default: torchvision download cached in --data_root')
    c.add_argument('--data_root', default='./data', help='torchvision MNIST cache folder (default: %(default)s)')
    c.add_argument('--inception_weights',
                   help='also compute standard Inception FID (pytorch-fid) from this local weights file '
                        '(pt_inception-2015-12-05-6726825d.pth); never downloads')
    args = p.parse_args(argv)
    check_flags(args)
    if args.quick:
        args.compare = True
    return args


def resolve_checkpoint(args):
    """(path, output folder name) for --checkpoint, --milestone or the shipped model."""
    from ddpm_mnist.checkpoint import find_milestone
    from ddpm_mnist.utils import file_digest
    if args.checkpoint and args.milestone is not None:
        raise UserError('give either --checkpoint or --milestone, not both')
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise UserError(f'checkpoint {path} does not exist')
        # the file's digest keeps a/model-1.pt and b/model-1.pt from writing over each other's grids
        return path, f'inference_{path.stem}_{file_digest(path)[:8]}'
    if args.milestone is not None:
        return find_milestone(args.results_folder, args.milestone), f'inference_milestone_{args.milestone}'
    if SHIPPED.is_file():
        return SHIPPED, 'inference_pretrained'
    raise UserError('no model given: pass --milestone N (with --results_folder) or --checkpoint PATH')


def resolve_precision(precision, device):
    from ddpm_mnist.sampling import default_precision
    if precision == 'fp16' and device.type != 'cuda':
        raise UserError('--precision fp16 needs CUDA; use bf16 or fp32 on this device')
    return default_precision(device) if precision == 'auto' else precision


def load_for_sampling(args, device):
    """(path, run name, diffusion, config, info) for the checkpoint the flags name, ready to sample."""
    from ddpm_mnist.checkpoint import load_model
    from ddpm_mnist.model import model_overrides
    from ddpm_mnist.sampling import prepare_for_inference
    path, run_name = resolve_checkpoint(args)
    diffusion, config, info = load_model(path, model_overrides(args), use_ema=not args.use_online_weights,
                                         device=device)
    for key, value in (info.get('detected') or {}).items():
        print(f'detected from the checkpoint: {key} = {value}')
    prepare_for_inference(diffusion, args.precision, channels_last=args.channels_last, compile=args.compile)
    return path, run_name, diffusion, config, info


def main(argv=None):
    args = parse_args(argv)
    from ddpm_mnist.compare import grid_name, save_grid
    from ddpm_mnist.sampling import (check_settings, default_batch_size, keep_freed_memory, nfe, pick_device,
                                     timed_sample)
    from ddpm_mnist.utils import ensure_writable_dir, remove_stale_temporaries, write_json

    device = pick_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    if device.type == 'cpu':
        keep_freed_memory()
    if args.compare:
        return compare(args, device)
    path, run_name, diffusion, config, info = load_for_sampling(args, device)
    total = diffusion.num_timesteps
    default_steps = total if args.strategy == 'ddpm' else min(50, total)
    steps = default_steps if args.sample_steps is None else args.sample_steps
    args.num_samples = 25 if args.num_samples is None else args.num_samples
    if args.batch_size is None:
        args.batch_size = default_batch_size(device, args.num_samples)
    check_settings(args.strategy, steps, args.ddim_eta, args.num_samples, args.batch_size, total)
    if args.strategy == 'ddpm' and steps != total:
        warn(f'DDPM always runs all T={total} steps; --sample_steps {steps} is ignored '
             '(use --strategy ddim for fewer steps)')
        steps = total
    out_dir = ensure_writable_dir(Path(args.results_folder) / run_name / args.strategy)
    remove_stale_temporaries(out_dir)

    images, seconds = timed_sample(diffusion, strategy=args.strategy, num_samples=args.num_samples,
                                   batch_size=args.batch_size, steps=steps, eta=args.ddim_eta, seed=args.seed,
                                   precision=args.precision)
    if not images.isfinite().all():
        raise UserError(f'{path}: sampling produced NaN values; the weights are broken')
    name = grid_name(args.strategy, steps, args.ddim_eta)
    grid = out_dir / f'{name}.png'
    calls = nfe(args.strategy, steps, total)
    record = dict(strategy=args.strategy, sample_steps=steps, ddim_eta=args.ddim_eta if args.strategy == 'ddim'
                  else None, num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                  precision=args.precision, device=str(device), nfe_per_image=calls, seconds=round(seconds, 4),
                  seconds_per_image=round(seconds / args.num_samples, 5), **info,
                  model=config['model'], diffusion=config['diffusion'])
    grid.with_suffix('.json').unlink(missing_ok=True)  # a kill before the new record lands leaves no stale one
    save_grid(images, grid, record)  # the grid carries its record; the JSON beside it is a copy
    write_json(grid.with_suffix('.json'), record)
    print(f'{args.strategy.upper()} {steps} steps' + (f', eta {args.ddim_eta}' if args.strategy == 'ddim' else '')
          + f': {args.num_samples} images in {seconds:.2f} s ({seconds / args.num_samples:.4f} s/image, '
          f'NFE {calls} per image) on {device}; {info["weights"].upper()} weights of {path}')
    print(f'saved {grid}')
    return record


def compare(args, device):
    from ddpm_mnist.compare import DEFAULT_ETAS, DEFAULT_STEPS, QUICK, run_sweep
    from ddpm_mnist.sampling import default_batch_size
    from ddpm_mnist.data import load_split
    from ddpm_mnist.metrics import Evaluator, inception_fid, inception_model
    from ddpm_mnist.utils import ensure_writable_dir, remove_stale_temporaries

    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise UserError(f'--inception_weights {args.inception_weights} not found; download the pytorch-fid weights '
                        '(pt_inception-2015-12-05-6726825d.pth) on a machine with internet and pass their path')
    inception = inception_model(args.inception_weights, device) if args.inception_weights else None
    path, run_name, diffusion, config, _ = load_for_sampling(args, device)
    steps = args.compare_steps or (QUICK['steps'] if args.quick else DEFAULT_STEPS)
    etas = args.compare_etas or (QUICK['etas'] if args.quick else DEFAULT_ETAS)
    n = args.num_samples or (QUICK['num_samples'] if args.quick else 1000)
    if n < 2:
        raise UserError(f'--num_samples must be at least 2 for --compare (got {n})')
    out_dir = ensure_writable_dir(Path(args.results_folder) / run_name / ('quick_comparison' if args.quick
                                                                          else 'comparison'))
    for folder in (out_dir, out_dir / 'grids', out_dir / 'cache'):
        remove_stale_temporaries(folder)
    reference, _ = load_split('test', args.raw_dir, args.data_root)
    train, _ = load_split('train', args.raw_dir, args.data_root)
    evaluator = Evaluator(reference, train, image_size=config['diffusion']['image_size'], seed=args.seed)
    extra = None
    if args.inception_weights:
        import torch
        reference_tensor = torch.from_numpy(reference.copy())

        def extra(images):
            return {'inception_fid': inception_fid(images, reference_tensor, inception, device)}
    batch_size = default_batch_size(device, n) if args.batch_size is None else args.batch_size
    run_sweep(diffusion, evaluator, out_dir, path, steps=steps, etas=etas, num_samples=n,
              batch_size=batch_size, seed=args.seed, precision=args.precision,
              extra_score=extra, ddpm=args.compare_ddpm)
    print((out_dir / 'comparison.md').read_text())
    print(f'wrote {out_dir}/comparison.json, .csv, .md, .png and grids/')
    return out_dir


if __name__ == '__main__':
    run_cli(main)
