"""Train a DDPM on a folder of MNIST PNGs with denoising-diffusion-pytorch (Unet, GaussianDiffusion, Trainer).

Writes config.json, milestone checkpoints model-N.pt and sample grids sample-N.png into --results_folder.
Multi-GPU: accelerate launch train_ddpm_mnist.py ... (see README).
"""
import argparse
import contextlib
import copy
import time
from pathlib import Path

from ddpm_mnist.model import PRESETS, add_model_args, arch_differences, model_overrides, read_config, versions
from ddpm_mnist.utils import UserError, ensure_writable_dir, remove_stale_temporaries, run_cli, warn
from ddpm_mnist.validation import SQUARE, check_flags, check_relations

TRAINING_FLAGS = {
    'train_batch_size': (int, 'images per process per step'),
    'train_lr': (float, 'Adam learning rate'),
    'train_num_steps': (int, 'total optimiser steps (training stops there; resuming continues up to it)'),
    'gradient_accumulate_every': (int, 'batches accumulated per optimiser step'),
    'ema_decay': (float, 'EMA decay of the weights used for sampling'),
    'ema_update_every': (int, 'update the EMA every this many steps'),
    'save_and_sample_every': (int, 'steps between milestones (model-N.pt and sample-N.png)'),
    'num_samples': (int, 'images in each sample-N.png (a square number)'),
    'sampling_timesteps': (int, 'DDIM steps for the sample-N.png grids (default: T, i.e. DDPM as the original)'),
    'results_folder': (str, 'where config.json, model-N.pt and sample-N.png go'),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='seed',
                   help='seed: the original project exactly (36M-parameter Unet, 100k steps; needs a GPU); '
                        'small: a 1.4M-parameter Unet that reaches recognisable digits in about an hour on a '
                        '2-core CPU. Explicit flags override the preset. (default: %(default)s)')
    p.add_argument('--data_folder', default='./data/mnist_image_folder',
                   help='folder of training PNGs made by get_mnist_data.py (default: %(default)s)')
    add_model_args(p)
    g = p.add_argument_group('training (default: from the preset)')
    for name, (kind, help_text) in TRAINING_FLAGS.items():
        g.add_argument(f'--{name}', type=kind, help=help_text)
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='mixed precision (original: on); fp16 on CUDA, bf16 on CPU')
    g.add_argument('--mixed_precision_type', choices=['auto', 'fp16', 'bf16'], default='auto',
                   help='precision used when --amp is on (default: fp16 on CUDA, bf16 elsewhere)')
    g.add_argument('--calculate_fid', action='store_true',
                   help="compute the library's Inception FID at each milestone (downloads Inception weights; "
                        'slow; off by default)')
    g.add_argument('--num_fid_samples', type=int, default=50000, help='samples per FID computation')
    p.add_argument('--fast_path', action=argparse.BooleanOptionalAction, default=True,
                   help='the training-speed levers measured by benchmarks/bench_training.py: training images decoded '
                        'once into memory, channels_last with layout-aware attention, fused Adam, foreach EMA; same '
                        'maths. --no-fast_path runs the library\'s plain step (PNG decoding in DataLoader workers), '
                        'as do runs of several processes (accelerate launch) (default: on)')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='torch.compile the Unet for training (fast path only; about a minute of compiling first). '
                        'Default: on for CPU training, where benchmarks/bench_training.py measured it faster; off '
                        'on GPUs, where it was not measured')
    p.add_argument('--num_workers', type=int, default=2,
                   help='DataLoader worker processes, used with --no-fast_path only (default: %(default)s)')
    p.add_argument('--resume', default='auto',
                   help='auto: continue from the latest milestone in the results folder; N: from milestone N '
                        '(must be the latest); none: start fresh (refused if milestones exist) (default: auto)')
    p.add_argument('--device', choices=['auto', 'cuda', 'mps', 'cpu'], default='auto',
                   help='auto picks CUDA, then MPS, then CPU (under accelerate launch, accelerate decides)')
    p.add_argument('--seed', type=int, default=None, help='random seed for reproducible training')
    args = p.parse_args(argv)
    check_flags(args, extra={'num_samples': SQUARE})
    return args


def build_config(args):
    config = copy.deepcopy(PRESETS[args.preset])
    for section, values in model_overrides(args).items():
        config[section].update(values)
    training = config['training']
    training.update({k: getattr(args, k) for k in TRAINING_FLAGS if getattr(args, k) is not None})
    if args.amp is not None:
        training['amp'] = args.amp
    training.update(preset=args.preset, calculate_fid=args.calculate_fid, seed=args.seed, fast_path=args.fast_path)
    check_training_settings(training)
    check_relations(image_size=config['diffusion']['image_size'], dim_mults=config['model']['dim_mults'],
                    timesteps=config['diffusion']['timesteps'], sampling_timesteps=training['sampling_timesteps'])
    config['versions'] = versions()
    return config


def check_training_settings(t):
    """The library asserts these deep inside Trainer; say them up front as one-line errors."""
    for key in ('train_batch_size', 'train_num_steps', 'gradient_accumulate_every', 'save_and_sample_every',
                'num_samples', 'ema_update_every'):
        if t[key] < 1:
            raise UserError(f'--{key} must be at least 1 (got {t[key]})')
    if int(t['num_samples'] ** 0.5) ** 2 != t['num_samples']:
        raise UserError(f'--num_samples must be a square number for the sample grid (got {t["num_samples"]})')
    if t['train_batch_size'] * t['gradient_accumulate_every'] < 16:
        raise UserError('--train_batch_size x --gradient_accumulate_every must be at least 16 (the library requires '
                        'it)')
    if t['sampling_timesteps'] is not None and t['sampling_timesteps'] < 1:
        raise UserError(f'--sampling_timesteps must be at least 1 (got {t["sampling_timesteps"]})')


def check_against_folder(config, folder):
    existing = read_config(folder)
    if existing is None:
        return
    diffs = arch_differences(existing, config)
    if diffs:
        raise UserError(f'{folder}/config.json was written for another model ({"; ".join(diffs)}); '
                        'use a new --results_folder or the same settings')
    if existing['training'].get('save_and_sample_every') != config['training']['save_and_sample_every']:
        raise UserError(f'{folder} was trained with --save_and_sample_every '
                        f'{existing["training"]["save_and_sample_every"]}; keep it so milestone numbers stay '
                        'consistent')


CPU_SECONDS_PER_STEP = 18  # --preset seed, bf16, 256 images per step, 2-core CPU (README, "Setup")


def cpu_warning(config, device):
    if device != 'cpu' or config['model']['dim'] <= 32:
        return
    t = config['training']
    seconds = t['train_num_steps'] * CPU_SECONDS_PER_STEP * t['train_batch_size'] * t['gradient_accumulate_every'] / 256
    estimate = f'{seconds / 86400:.0f} days' if seconds > 2 * 86400 else f'{seconds / 3600:.1f} hours'
    warn(f'training the original-size model on the CPU: about {CPU_SECONDS_PER_STEP} s per 256 images on a 2-core '
         f'CPU (measured), so {t["train_num_steps"]} steps take roughly {estimate}. Use a GPU, or --preset small '
         'for CPU training.')


def main(argv=None):
    args = parse_args(argv)
    import shlex
    import sys
    from accelerate import PartialState

    from ddpm_mnist.checkpoint import check_agrees, load_checkpoint, milestone_path
    from ddpm_mnist.data import check_training_folder, folder_info
    from ddpm_mnist.model import write_config
    from ddpm_mnist.training import (FolderLock, mixed_precision, resolve_resume,
                                     training_device)

    config = build_config(args)
    config['command'] = shlex.join(['python3', 'train_ddpm_mnist.py', *(sys.argv[1:] if argv is None else argv)])
    folder = config['training']['results_folder']
    num_images = check_training_folder(args.data_folder)
    device = training_device(args.device)
    state = PartialState(cpu=device == 'cpu')  # on CPU, accelerate only goes multi-process (gloo) when told
    precision = mixed_precision(config['training']['amp'], args.mixed_precision_type, device)
    config['training']['mixed_precision'] = precision
    config['data'] = {**folder_info(args.data_folder), 'folder': str(args.data_folder), 'num_images': num_images}
    if state.is_main_process:
        check_against_folder(config, folder)
        latest = resolve_resume(folder, args.resume)
        if latest is not None:  # weights and buffers of what we resume must be this run's model
            path = milestone_path(folder, latest)
            check_agrees(path, load_checkpoint(path), config, 'the settings of this run')
    created = not Path(folder).exists()
    ensure_writable_dir(folder)
    try:
        trainer = build_trainer(args, config, state, device, precision, num_images)
    except BaseException:  # nothing half-made: a folder this run created is removed again while still empty
        if created and state.is_main_process and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
        raise
    with contextlib.ExitStack() as stack:
        if state.is_main_process:  # one writer: config, lock and checkpoints belong to the main process
            stack.enter_context(FolderLock(folder))
            check_against_folder(config, folder)  # again under the lock: another run may have started meanwhile
            remove_stale_temporaries(folder)
            write_config(folder, config)
        state.wait_for_everyone()
        train(trainer, config, state, resolve_resume(folder, args.resume))


def build_trainer(args, config, state, device, precision, num_images):
    """The library's classes, built and checked (data decoded) before anything is written to the folder."""
    from accelerate.utils import set_seed

    from ddpm_mnist.model import build_diffusion
    from ddpm_mnist.training import MnistTrainer

    training = config['training']
    if args.seed is not None:
        set_seed(args.seed)
    effective = training['train_batch_size'] * training['gradient_accumulate_every'] * state.num_processes
    state.print(f'preset {args.preset}: Unet dim {config["model"]["dim"]} mults {config["model"]["dim_mults"]}, '
                f'objective {config["diffusion"]["objective"]}, {num_images} training images, device {device} x '
                f'{state.num_processes}, precision {precision}, effective batch {effective} '
                f'({training["train_batch_size"]} per process x {training["gradient_accumulate_every"]} accumulation'
                f' x {state.num_processes} processes)')
    if state.is_main_process:
        cpu_warning(config, device)
    diffusion = build_diffusion(config, sampling_timesteps=training['sampling_timesteps'])
    return MnistTrainer(
        diffusion, args.data_folder, config=config, num_workers=args.num_workers, fast=args.fast_path,
        compile=args.fast_path and (device == 'cpu' if args.compile is None else args.compile),
        train_batch_size=training['train_batch_size'], train_lr=training['train_lr'],
        train_num_steps=training['train_num_steps'],
        gradient_accumulate_every=training['gradient_accumulate_every'],
        ema_decay=training['ema_decay'], ema_update_every=training['ema_update_every'],
        amp=precision != 'no', mixed_precision_type=precision if precision != 'no' else 'fp16',
        results_folder=training['results_folder'], save_and_sample_every=training['save_and_sample_every'],
        num_samples=training['num_samples'], calculate_fid=training['calculate_fid'],
        num_fid_samples=args.num_fid_samples)


def train(trainer, config, state, resume):
    training = config['training']
    folder = training['results_folder']
    if resume is not None:
        trainer.load(resume)
        state.print(f'resumed from milestone {resume} (step {trainer.step}) in {folder}')
    if trainer.step >= training['train_num_steps']:
        state.print(f'already trained to step {trainer.step} of {training["train_num_steps"]}; nothing to do '
                    '(raise --train_num_steps to train further)')
        return
    effective = training['train_batch_size'] * training['gradient_accumulate_every'] * state.num_processes
    started, first_step = time.time(), trainer.step
    trainer.train()
    seconds = time.time() - started
    state.print(f'trained to step {trainer.step} in {seconds:.0f} s ({(trainer.step - first_step) * effective / seconds:.1f} '
                f'images/s, milestone grids included); checkpoints in {folder}')


if __name__ == '__main__':
    run_cli(main)
