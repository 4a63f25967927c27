"""The inference command: load a checkpoint, sample one grid with one sampler, or run the sampler sweep."""
from pathlib import Path

from .settings import model_overrides
from .utils import UserError, ensure_writable_dir, file_digest, remove_stale_temporaries, save_grid, warn, write_json

SHIPPED = Path(__file__).resolve().parent.parent / 'pretrained' / 'ddpm_mnist_small.safetensors'
TRAINING_RESULTS, SHIPPED_RESULTS = './results_mnist_ddpm', './runs'  # default --results_folder of each


def resolve_checkpoint(args):
    """(path, output folder name) for --checkpoint, --milestone or the shipped model; sets the default
    --results_folder: the original's folder for a training run, ./runs for the shipped model."""
    from .run_folder import find_milestone
    shipped = not args.checkpoint and args.milestone is None
    args.results_folder = args.results_folder or (SHIPPED_RESULTS if shipped else TRAINING_RESULTS)
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
    from .sampling import default_precision
    if precision == 'fp16' and device.type != 'cuda':
        raise UserError('--precision fp16 needs CUDA; use bf16 or fp32 on this device')
    return default_precision(device) if precision == 'auto' else precision


def load_for_sampling(args, device):
    """(path, run name, Loaded(diffusion, config, info)) for the checkpoint the flags name, ready to sample."""
    from .run_folder import load_model
    from .sampling import prepare_for_inference
    path, run_name = resolve_checkpoint(args)
    loaded = load_model(path, model_overrides(args), use_ema=not args.use_online_weights, device=device)
    for key, value in (loaded.info.get('detected') or {}).items():
        print(f'detected from the checkpoint: {key} = {value}')
    prepare_for_inference(loaded.diffusion, args.precision, channels_last=args.channels_last, compile=args.compile)
    return path, run_name, loaded


def run_inference(args):
    """Set up the device (and its precision), then sample one grid or run the sweep."""
    from .device import keep_freed_memory, pick_device
    device = pick_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    if device.type == 'cpu':
        keep_freed_memory()
    return run_sweep_from_args(args, device) if args.compare else sample_grid(args, device)


def sample_grid(args, device):
    from .samplers import SAMPLERS, grid_name, nfe, resolve_steps
    from .sampling import default_batch_size, timed_sample
    path, run_name, (diffusion, config, info) = load_for_sampling(args, device)
    total, spec = diffusion.num_timesteps, SAMPLERS[args.strategy]
    steps = resolve_steps(args.strategy, args.sample_steps, total)
    if spec.all_steps and args.sample_steps not in (None, total):
        warn(f'{spec.label} always runs all T={total} steps; --sample_steps {args.sample_steps} is ignored '
             '(use --strategy ddim or another sampler for fewer steps)')
    if not spec.uses_eta and args.ddim_eta:
        warn(f'--ddim_eta {args.ddim_eta} applies to DDIM only; {spec.label} ignores it')
    eta = args.ddim_eta if spec.uses_eta else None
    num_samples = 25 if args.num_samples is None else args.num_samples
    batch_size = default_batch_size(device, num_samples) if args.batch_size is None else args.batch_size
    out_dir = ensure_writable_dir(Path(args.results_folder) / run_name / args.strategy)
    remove_stale_temporaries(out_dir)
    images, seconds = timed_sample(diffusion, strategy=args.strategy, num_samples=num_samples, batch_size=batch_size,
                                   steps=steps, eta=eta or 0.0, seed=args.seed)
    if not images.isfinite().all():
        raise UserError(f'{path}: sampling produced NaN values; the weights are broken')
    grid = out_dir / f'{grid_name(args.strategy, steps, eta)}.png'
    calls = nfe(args.strategy, steps, total)
    record = dict(strategy=args.strategy, sample_steps=steps, ddim_eta=eta, num_samples=num_samples,
                  batch_size=batch_size, seed=args.seed, precision=args.precision, device=str(device),
                  nfe_per_image=calls, seconds=round(seconds, 4), seconds_per_image=round(seconds / num_samples, 5),
                  **info, model=config['model'], diffusion=config['diffusion'])
    grid.with_suffix('.json').unlink(missing_ok=True)  # a kill before the new record lands leaves no stale one
    save_grid(images, grid, record)  # the grid carries its record; the JSON beside it is a copy
    write_json(grid.with_suffix('.json'), record)
    print(f'{spec.label} {steps} steps' + (f', eta {eta}' if spec.uses_eta else '')
          + f': {num_samples} images in {seconds:.2f} s ({seconds / num_samples:.4f} s/image, '
          f'NFE {calls} per image) on {device}; {info["weights"].upper()} weights of {path}')
    print(f'saved {grid}')
    return record


def sweep_settings(args):
    """(samplers, DDIM steps, DDIM etas, other samplers' steps, N) from the sweep flags and --quick."""
    from .sweep import DEFAULT_ETAS, DEFAULT_SOLVER_STEPS, DEFAULT_STEPS, QUICK
    from .samplers import SAMPLERS
    quick = QUICK if args.quick else {}
    samplers = args.compare_samplers or quick.get('samplers') or tuple(SAMPLERS)
    if not args.compare_ddpm:
        samplers = [name for name in samplers if name != 'ddpm']
    n = args.num_samples or quick.get('num_samples', 1000)
    if n < 2:
        raise UserError(f'--num_samples must be at least 2 for --compare (got {n})')
    return (samplers, args.compare_steps or quick.get('steps', DEFAULT_STEPS),
            args.compare_etas or quick.get('etas', DEFAULT_ETAS),
            args.compare_solver_steps or quick.get('solver_steps', DEFAULT_SOLVER_STEPS), n)


def make_evaluator(args, image_size):
    """Metrics against the MNIST test split; with no MNIST on disk, against the shipped statistics."""
    from .data import DOWNLOAD_HELP, load_split
    from .metrics import Evaluator, load_reference_stats
    try:
        reference, _ = load_split('test', args.raw_dir, args.data_root)
        train, _ = load_split('train', args.raw_dir, args.data_root)
    except UserError as err:
        stats = load_reference_stats(image_size=image_size)
        if stats is None:
            raise
        warn(f'MNIST not found ({str(err).split(";")[0]}): FID, IS, confidence and class balance use the shipped '
             'test-split statistics; precision/recall, near-copies and most calibration rows need the digits and '
             f'are skipped. To get MNIST: {DOWNLOAD_HELP}')
        return Evaluator(image_size=image_size, seed=args.seed, stats=stats), None
    return Evaluator(reference, train, image_size=image_size, seed=args.seed), reference


def run_sweep_from_args(args, device):
    from .metrics import inception_fid, inception_model
    from .sampling import default_batch_size
    from .sweep import run_sweep, sweep_configs

    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise UserError(f'--inception_weights {args.inception_weights} not found; download the pytorch-fid weights '
                        '(pt_inception-2015-12-05-6726825d.pth) on a machine with internet and pass their path')
    inception = inception_model(args.inception_weights, device) if args.inception_weights else None
    path, run_name, (diffusion, config, _) = load_for_sampling(args, device)
    samplers, steps, etas, solver_steps, n = sweep_settings(args)
    total = diffusion.num_timesteps  # default step counts above T are dropped; explicit ones are an error
    steps = steps if args.compare_steps else [s for s in steps if s <= total]
    solver_steps = solver_steps if args.compare_solver_steps else [s for s in solver_steps if s <= total]
    configs = sweep_configs(samplers, steps=steps, etas=etas, solver_steps=solver_steps, total_timesteps=total)
    out_dir = ensure_writable_dir(Path(args.results_folder) / run_name / ('quick_comparison' if args.quick
                                                                          else 'comparison'))
    for folder in (out_dir, out_dir / 'grids', out_dir / 'cache'):
        remove_stale_temporaries(folder)
    evaluator, reference = make_evaluator(args, config['diffusion']['image_size'])
    extra = None
    if inception is not None:
        if reference is None:
            raise UserError('--inception_weights needs the MNIST test digits; pass --raw_dir')
        import torch
        reference_tensor = torch.from_numpy(reference.copy())
        extra = lambda images: {'inception_fid': inception_fid(images, reference_tensor, inception, device)}  # noqa: E731
    batch_size = default_batch_size(device, n) if args.batch_size is None else args.batch_size
    run_sweep(diffusion, evaluator, out_dir, path, configs, num_samples=n, batch_size=batch_size, seed=args.seed,
              precision=args.precision, extra_score=extra)
    print((out_dir / 'comparison.md').read_text())
    print(f'wrote {out_dir}/comparison.json, .csv, .md, .png and grids/')
    return out_dir
