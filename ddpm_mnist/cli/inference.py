"""The inference command: load a checkpoint, sample one grid with one sampler, or run the sampler sweep.
Both take keyword arguments; inference_comparison.py maps its flags onto them."""
from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ddpm_mnist.api import checkpoint_path, load_model
from ddpm_mnist.model.checkpoints import Loaded
from ddpm_mnist.evaluation.classifier import SECOND_WEIGHTS, load_classifier
from ddpm_mnist.model.conditional import NUM_DIGITS, is_conditional
from ddpm_mnist.model.config import trained_on
from ddpm_mnist.evaluation.metrics import Evaluator, inception_fid, inception_model
from ddpm_mnist.evaluation.reference import reference_evaluator
from ddpm_mnist.training.run_folder import find_milestone
from ddpm_mnist.sampling.registry import DIFFUSION_SAMPLERS, SAMPLERS, SamplerSettings
from ddpm_mnist.sampling.loop import check_batch, conditioning, default_batch_size, timed_sample
from ddpm_mnist.settings import SHIPPED
from ddpm_mnist.evaluation.sweep import (DEFAULT_ETAS, DEFAULT_SOLVER_STEPS, DEFAULT_STEPS, QUICK, STUDENT_PAIRS,
                                         eta_pairs, run_sweep, subset_stride, sweep_configs)
from ddpm_mnist.sampling.images import save_grid
from ddpm_mnist.utils import (Config, FolderLock, PathLike, UserError, ensure_writable_dir, file_digest,
                              remove_stale_temporaries, warn, write_json)

TRAINING_RESULTS, SHIPPED_RESULTS = './results_mnist_ddpm', './runs'  # default --results_folder of each
# What a command needs of the model its flags name; loaded is checkpoints.Loaded(diffusion, config, info).
Opened = namedtuple('Opened', 'device precision path run_name results_folder loaded')


def resolve_checkpoint(*, checkpoint: PathLike | None = None, milestone: int | None = None,
                       results_folder: PathLike | None = None, conditional: bool = False,
                       student: bool = False) -> tuple[Path, str, PathLike]:
    """(path, output folder name, results folder) for the flags: --checkpoint, --milestone of --results_folder or the
    shipped model (api.checkpoint_path finds the file; `student`: a student's sampler was asked for, so its shipped
    student); the results folder defaults to the original's for a training run, ./runs for the shipped model."""
    shipped = not checkpoint and milestone is None
    results_folder = results_folder or (SHIPPED_RESULTS if shipped else TRAINING_RESULTS)
    if checkpoint and milestone is not None:
        raise UserError('give either --checkpoint or --milestone, not both')
    if conditional and not shipped:
        raise UserError('--conditional selects the shipped conditional model; with --checkpoint or --milestone, '
                        'drop it')
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise UserError(f'checkpoint {checkpoint} does not exist')
        path = checkpoint_path(checkpoint)
        # the file's digest keeps a/model-1.pt and b/model-1.pt from writing over each other's grids
        return path, f'inference_{path.stem}_{file_digest(path)[:8]}', results_folder
    if milestone is not None:
        return find_milestone(results_folder, milestone), f'inference_milestone_{milestone}', results_folder
    if not conditional and not student and not SHIPPED.is_file():
        raise UserError('no model given: pass --milestone N (with --results_folder) or --checkpoint PATH')
    path = checkpoint_path(conditional=conditional, student=student)
    name = 'inference_pretrained' + ('_conditional' if conditional else '') + ('_student' if student else '')
    return path, name, results_folder


def second_evaluator(choice: str, reference: np.ndarray | None, image_size: int, seed: int,
                     dataset: str = 'mnist') -> Evaluator | None:
    """The second, independent feature network's evaluator ('auto': the shipped one, for MNIST models when MNIST is
    on disk), or None ('none', or nothing to score against)."""
    if choice == 'none' or (choice == 'auto' and dataset != 'mnist'):
        return None
    path = SECOND_WEIGHTS if choice == 'auto' else Path(choice)
    if not path.is_file():
        if choice == 'auto':
            return None
        raise UserError(f'--second_classifier {choice} not found; train it with: python3 scripts/train_classifier.py '
                        '--arch wide --seed 1')
    if reference is None:
        if choice == 'auto':
            return None
        raise UserError('--second_classifier needs the MNIST test digits; pass --raw_dir')
    return Evaluator(reference, None, image_size=image_size, classifier=load_classifier(path), seed=seed)


def open_model(*, checkpoint: PathLike | None = None, milestone: int | None = None,
               results_folder: PathLike | None = None, device: str = 'auto', precision: str = 'auto',
               channels_last: bool = True, compile: bool = False, use_online_weights: bool = False,
               overrides: Config | None = None, conditional: bool = False, student: bool = False) -> Opened:
    """Everything a command needs of the model the flags name (Opened), the model opened by api.load_model."""
    path, run_name, results_folder = resolve_checkpoint(checkpoint=checkpoint, milestone=milestone,
                                                        results_folder=results_folder, conditional=conditional,
                                                        student=student)
    model = load_model(path, device=device, precision=precision, use_ema=not use_online_weights,
                       overrides=overrides, channels_last=channels_last, compile=compile)
    for key, value in (model.info.get('detected') or {}).items():
        print(f'detected from the checkpoint: {key} = {value}')
    return Opened(device=model.device, precision=model.precision, path=path, run_name=run_name,
                  results_folder=results_folder, loaded=Loaded(model.diffusion, model.config, model.info))


def sample_grid(*, strategy: str = 'ddpm', sample_steps: int | None = None, ddim_eta: float = 0.0,
                num_samples: int | None = None, batch_size: int | None = None, seed: int = 0,
                digits: Sequence[int] | None = None, guidance_scale: float = 1.0,
                guidance_remove_parallel: bool = False, guidance_rescaled_phi: float = 0.0,
                **model: Any) -> dict[str, Any]:
    """Sample one grid with one sampler, timed; writes STRATEGY/<grid>.png with its record (and a JSON copy). On a
    conditional model, `digits` (default all ten) are drawn in equal numbers, one digit per grid row, with
    classifier-free guidance of scale `guidance_scale` (1: none). A student's sampler (consistency) without a
    checkpoint samples the shipped student."""
    opened = open_model(**model, student=SAMPLERS[strategy].student)
    device, (diffusion, config, info), path = opened.device, opened.loaded, opened.path
    total, spec = diffusion.num_timesteps, SAMPLERS[strategy]
    if spec.all_steps and sample_steps not in (None, total):
        warn(f'{spec.label} always runs all T={total} steps; --sample_steps {sample_steps} is ignored '
             '(use --strategy ddim or another sampler for fewer steps)')
    if not spec.uses_eta and ddim_eta:
        warn(f'--ddim_eta {ddim_eta} applies to DDIM only; {spec.label} ignores it')
    settings = SamplerSettings.resolve(strategy, sample_steps, ddim_eta, total_timesteps=total)
    steps, eta = settings.steps, settings.eta
    num_samples = 25 if num_samples is None else num_samples
    batch_size = default_batch_size(device, num_samples) if batch_size is None else batch_size
    check_batch(num_samples, batch_size)  # before any folder is made
    labels, guidance = conditioning(diffusion, num_samples, digits=digits, guidance_scale=guidance_scale,
                                    remove_parallel=guidance_remove_parallel, rescaled_phi=guidance_rescaled_phi)
    conditional, digits = labels is not None, list(range(NUM_DIGITS)) if digits is None else digits
    out_dir = ensure_writable_dir(Path(opened.results_folder) / opened.run_name / strategy)
    remove_stale_temporaries(out_dir)
    with FolderLock(out_dir, 'sampling'):  # a second run into this folder is refused, naming this one
        images, seconds = timed_sample(diffusion, settings, num_samples=num_samples, batch_size=batch_size, seed=seed,
                                       labels=labels, guidance=guidance)
        if not images.isfinite().all():
            raise UserError(f'{path}: sampling produced NaN values; the weights are broken')
        name = settings.grid_name
        if conditional:
            name += f'_digits{"".join(map(str, digits))}_w{guidance_scale:g}'
        grid = out_dir / f'{name}.png'
        record = dict(strategy=strategy, sample_steps=steps, ddim_eta=eta, num_samples=num_samples,
                      **(dict(digits=digits, guidance=guidance._asdict()) if conditional else {}),
                      batch_size=batch_size, seed=seed, precision=opened.precision, device=str(device),
                      nfe_per_image=steps, seconds=round(seconds, 4), seconds_per_image=round(seconds / num_samples, 5),
                      **info, model=config['model'], diffusion=config['diffusion'])
        per_row = -(-num_samples // len(digits)) if conditional and len(digits) > 1 else None  # a row per digit
        grid.with_suffix('.json').unlink(missing_ok=True)  # a kill before the new record lands leaves no stale one
        save_grid(images, grid, record, nrow=per_row)  # the grid carries its record; the JSON beside it is a copy
        write_json(grid.with_suffix('.json'), record)
    print(f'{spec.label} {steps} steps' + (f', eta {eta}' if spec.uses_eta else '')
          + f': {num_samples} images in {seconds:.2f} s ({seconds / num_samples:.4f} s/image, '
          f'NFE {steps} per image) on {device}; {info["weights"].upper()} weights of {path}')
    print(f'saved {grid}')
    return record


def sweep_settings(*, quick: bool = False, compare_samplers: Sequence[str] | None = None, compare_ddpm: bool = True,
                   compare_steps: Sequence[int] | None = None, compare_etas: Sequence[float] | None = None,
                   compare_solver_steps: Sequence[int] | None = None, num_samples: int | None = None
                   ) -> tuple[Sequence[str], Sequence[int], Sequence[float], Sequence[int], int]:
    """(samplers, DDIM steps, DDIM etas, other samplers' steps, N) from the sweep settings and quick."""
    defaults = QUICK if quick else {}
    samplers = compare_samplers or defaults.get('samplers') or DIFFUSION_SAMPLERS
    if not compare_ddpm:
        samplers = [name for name in samplers if name != 'ddpm']
    n = num_samples or defaults.get('num_samples', 1000)
    if n < 2:
        raise UserError(f'--num_samples must be at least 2 for --compare (got {n})')
    return (samplers, compare_steps or defaults.get('steps', DEFAULT_STEPS),
            compare_etas or defaults.get('etas', DEFAULT_ETAS),
            compare_solver_steps or defaults.get('solver_steps', DEFAULT_SOLVER_STEPS), n)


STUDENT_STEPS = (1, 2, 4)  # a student's sweep rows: the step counts distill_ddpm_mnist.py trains it for


def open_student(checkpoint: PathLike, teacher: Opened) -> tuple[Path, Any]:
    """(path, diffusion) of the distilled student the sweep adds rows for ('shipped': the swept model's shipped
    student), on the teacher's device and precision; refused in one line when it is not a student or was distilled
    from another model than the one swept."""
    conditional = is_conditional(teacher.loaded.config['model'])
    path = (checkpoint_path(conditional=conditional, student=True) if checkpoint == 'shipped'
            else checkpoint_path(checkpoint))
    model = load_model(path, device=str(teacher.device), precision=teacher.precision)
    if not getattr(model.diffusion, 'student', None):
        raise UserError(f'--compare_student {path} is not a distilled student (distill_ddpm_mnist.py makes one); '
                        'give a student distilled from the swept model')
    from ddpm_mnist.training.distill import teacher_digest
    learned_from, swept = teacher_digest(model.config), file_digest(teacher.path)
    if learned_from != swept:
        raise UserError(f'--compare_student {path} was distilled from another model (digest {learned_from}) than '
                        f'the swept {teacher.path} ({swept}); sweep its teacher, or give a student of this model')
    return path, model.diffusion


def run_comparison(*, quick: bool = False, compare_samplers: Sequence[str] | None = None, compare_ddpm: bool = True,
                   compare_steps: Sequence[int] | None = None, compare_etas: Sequence[float] | None = None,
                   compare_solver_steps: Sequence[int] | None = None, num_samples: int | None = None,
                   compare_ddpm_samples: int | None = None, compare_student: PathLike | None = None,
                   compare_student_steps: Sequence[int] | None = None,
                   batch_size: int | None = None, seed: int = 0, raw_dir: PathLike | None = None,
                   data_root: PathLike = './data', inception_weights: PathLike | None = None,
                   second_classifier: str = 'auto', digits: Sequence[int] | None = None, guidance_scale: float = 1.0,
                   guidance_remove_parallel: bool = False, guidance_rescaled_phi: float = 0.0,
                   **model: Any) -> Path:
    """The sampler sweep: every configuration from the same x_T, scored; writes comparison.{json,csv,md,png}."""
    if inception_weights and not Path(inception_weights).is_file():
        raise UserError(f'--inception_weights {inception_weights} not found; download the pytorch-fid weights '
                        '(pt_inception-2015-12-05-6726825d.pth) on a machine with internet and pass their path')
    opened = open_model(**model)
    device, (diffusion, config, _) = opened.device, opened.loaded
    inception = inception_model(inception_weights, device) if inception_weights else None
    samplers, steps, etas, solver_steps, n = sweep_settings(
        quick=quick, compare_samplers=compare_samplers, compare_ddpm=compare_ddpm, compare_steps=compare_steps,
        compare_etas=compare_etas, compare_solver_steps=compare_solver_steps, num_samples=num_samples)
    subset_stride(n, compare_ddpm_samples)  # checked before any sampling
    labels, guidance = conditioning(diffusion, n, digits=digits, guidance_scale=guidance_scale,
                                    remove_parallel=guidance_remove_parallel, rescaled_phi=guidance_rescaled_phi)
    total = diffusion.num_timesteps  # default step counts above T are dropped; explicit ones are an error
    steps = steps if compare_steps else [s for s in steps if s <= total]
    solver_steps = solver_steps if compare_solver_steps else [s for s in solver_steps if s <= total]
    configs = sweep_configs(samplers, steps=steps, etas=etas, solver_steps=solver_steps, total_timesteps=total)
    student = None
    if compare_student is not None:
        student = open_student(compare_student, opened)
        configs += [SamplerSettings.resolve('consistency', s, total_timesteps=student[1].num_timesteps)
                    for s in compare_student_steps or STUDENT_STEPS]
    evaluator, reference = reference_evaluator(image_size=config['diffusion']['image_size'], raw_dir=raw_dir,
                                               data_root=data_root, seed=seed, dataset=trained_on(config))
    out_dir = ensure_writable_dir(Path(opened.results_folder) / opened.run_name
                                  / ('quick_comparison' if quick else 'comparison'))
    for folder in (out_dir, out_dir / 'grids', out_dir / 'cache'):
        remove_stale_temporaries(folder)
    scorers = []
    if inception is not None:
        if reference is None:
            raise UserError('--inception_weights needs the MNIST test digits; pass --raw_dir')
        reference_tensor = torch.from_numpy(reference.copy())
        scorers.append(lambda images: {'inception_fid': inception_fid(images, reference_tensor, inception, device)})
    second = second_evaluator(second_classifier, reference, config['diffusion']['image_size'], seed,
                              trained_on(config))
    if second is not None:
        scorers.append(lambda images: {f'{k}_b': v for k, v in second.score(images).items()
                                       if k in ('fid', 'fid_low', 'fid_high')})
    extra = (lambda images: {k: v for scorer in scorers for k, v in scorer(images).items()}) if scorers else None
    batch_size = default_batch_size(device, n) if batch_size is None else batch_size
    pairs = [QUICK['headline']] if quick else eta_pairs(steps) + list(STUDENT_PAIRS if student else ())
    with FolderLock(out_dir, 'sweep'):  # two sweeps into one folder would share its cache and tables
        run_sweep(diffusion, evaluator, out_dir, opened.path, configs, num_samples=n,
                  ddpm_num_samples=compare_ddpm_samples, batch_size=batch_size, seed=seed, precision=opened.precision,
                  extra_score=extra, pairs=pairs, labels=labels, guidance=guidance, student=student)
    print((out_dir / 'comparison.md').read_text())
    print(f'wrote {out_dir}/comparison.json, .csv, .md, .png and grids/')
    return out_dir
