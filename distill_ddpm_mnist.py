"""Distil a trained model (the teacher) into a few-step student by consistency distillation in the teacher's DDIM
time (Song et al. 2023; LCM, Luo et al. 2023): the student starts from the teacher's weights and learns to jump from
any point of the teacher's deterministic (eta 0) path straight to its end. Sample it with --strategy consistency and
1-8 steps. Milestones, resume, --max_minutes and the run folder are those of train_ddpm_mnist.py (the same training
step and Trainer); export a milestone with python -m ddpm_mnist.cli.export. See docs/distillation.md.

  python3 distill_ddpm_mnist.py --data_folder data/mnist_full_train --max_minutes 20
  python3 inference_comparison.py --checkpoint runs/distill/model-4.pt --strategy consistency --sample_steps 2
"""
import argparse
import shlex
import sys
from typing import Sequence

from ddpm_mnist.cli.arguments import ArgumentParser, add_setting
from ddpm_mnist.settings import at_least, fraction
from ddpm_mnist.utils import run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--teacher', default=None,
                   help='the model to distil: a checkpoint, an export or a run folder (default: the shipped model)')
    p.add_argument('--conditional', action='store_true', help='distil the shipped class-conditional model')
    p.add_argument('--init_from', default=None,
                   help='continue a student of this teacher from its export or milestone (a later segment on a fresh '
                        'machine): its weights start the run, its boundaries and guidance scale are kept, and its '
                        'provenance carries on (default: start from the teacher\'s weights)')
    add_setting(p, 'guidance_scale', help='a class-conditional teacher only: the classifier-free guidance scale W '
                                          'of the ODE the student learns; the student then draws guided digits '
                                          'with one network call per step (default: 1.25, the shipped scale, '
                                          'docs/conditional.md)')
    p.add_argument('--data_folder', default='./data/mnist_image_folder',
                   help='training images (get_mnist_data.py): where the teacher\'s path starts (default: %(default)s)')
    add_setting(p, 'results_folder', default='./runs/distill',
                help='run folder: milestones model-N.pt, grids, config.json (default: %(default)s)')
    g = p.add_argument_group('distillation')
    add_setting(g, 'boundaries', rule=at_least(2), type=int, default=50,
                help='the teacher\'s DDIM steps the student learns to join, one teacher step apart (default: '
                     '%(default)s, as LCM\'s skipping step of 20 over T = 1000)')
    add_setting(g, 'target_decay', rule=fraction(closed_top=False), type=float, default=0.95,
                help='EMA decay of the target network (Song et al. 2023: 0.95) (default: %(default)s)')
    g.add_argument('--loss', choices=['huber', 'l2'], default='huber',
                   help='pseudo-Huber (Song & Dhariwal 2023) or squared error (default: %(default)s)')
    g.add_argument('--teacher_order', type=int, choices=[1, 2], default=1,
                   help="the teacher's step between boundaries: 1, one DDIM step (LCM's); 2, that step corrected by "
                        "the teacher's x0 at its end (Heun's method in log-SNR, as Song et al. 2023 distil with "
                        'Heun): one more teacher call per step, the ODE followed more closely (default: %(default)s)')
    g = p.add_argument_group('training')
    add_setting(g, 'train_num_steps', default=20000, help='optimiser steps (default: %(default)s)')
    add_setting(g, 'train_batch_size', default=32, help='images per step (default: %(default)s)')
    add_setting(g, 'train_lr', default=2e-5, help='Adam learning rate (default: %(default)s)')
    add_setting(g, 'lr_schedule', default='constant',
                help='constant, or cosine: decay to 0 at --train_num_steps (a segment meant to end the run; set '
                     '--train_num_steps to what --max_minutes reaches) (default: %(default)s)')
    add_setting(g, 'ema_decay', default=0.999,
                help='EMA decay of the weights that are sampled and exported (default: %(default)s)')
    add_setting(g, 'save_and_sample_every', default=500,
                help='steps between milestones (default: %(default)s)')
    add_setting(g, 'num_samples', default=16, help='digits in each milestone grid (default: %(default)s)')
    add_setting(g, 'max_minutes', default=None,
                help='stop at the first milestone after this many minutes (a rerun resumes) (default: none)')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='torch.compile the student (default: on for CPU training)')
    p.add_argument('--resume', default='auto', help='auto, N or none, as train_ddpm_mnist.py (default: auto)')
    p.add_argument('--device', choices=['auto', 'cuda', 'mps', 'cpu'], default='auto', help='(default: auto)')
    add_setting(p, 'seed', default=None, help='random seed')
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.api import checkpoint_path, load_model
    from ddpm_mnist.model.network import attention_of
    from ddpm_mnist.model.conditional import is_conditional
    from ddpm_mnist.sampling.registry import default
    from ddpm_mnist.settings import DIFFUSION_KEYS, SHIPPED_GUIDANCE_SCALE
    from ddpm_mnist.training.command import train_model
    from ddpm_mnist.utils import file_digest
    teacher = checkpoint_path(args.teacher, conditional=args.conditional)
    config = load_model(teacher, precision='fp32').config  # the student has the teacher's architecture
    from ddpm_mnist.utils import UserError
    if config.get('student'):
        raise UserError(f'{teacher} is a student already; distil a diffusion model (the teacher)')
    conditional = is_conditional(config['model'])
    if args.guidance_scale is not None and not conditional:
        raise UserError('--guidance_scale needs a class-conditional teacher (--conditional for the shipped one); '
                        f'{teacher} is unconditional')
    guidance = dict(guidance_scale=default(args.guidance_scale, SHIPPED_GUIDANCE_SCALE)) if conditional else {}
    student = dict(method='consistency', boundaries=args.boundaries, target_decay=args.target_decay, loss=args.loss,
                   teacher_order=args.teacher_order, teacher=str(teacher), teacher_sha256_16=file_digest(teacher),
                   **guidance)
    init_from = teacher if args.init_from is None else checkpoint_path(args.init_from)  # a run folder: its latest
    if args.init_from is not None:
        check_continued_student(init_from, student)
    training = dict(train_num_steps=args.train_num_steps, train_batch_size=args.train_batch_size,
                    train_lr=args.train_lr, ema_decay=args.ema_decay, save_and_sample_every=args.save_and_sample_every,
                    num_samples=args.num_samples, results_folder=args.results_folder, lr_schedule=args.lr_schedule,
                    sampling_timesteps=min(50, config['diffusion']['timesteps']))  # (the student's grids: 2 steps)
    model = {**config['model'], 'attention': attention_of(config['model'])}  # older configs leave the layout implied
    train_model(preset='shipped', model=model,
                diffusion={k: config['diffusion'][k] for k in DIFFUSION_KEYS if k in config['diffusion']},
                training=training, data_folder=args.data_folder, init_from=init_from,
                max_minutes=args.max_minutes, resume=args.resume, device=args.device, seed=args.seed,
                compile=args.compile, student=student,
                command=shlex.join(['python3', 'distill_ddpm_mnist.py', *(sys.argv[1:] if argv is None else argv)]))


def check_continued_student(path, student) -> None:
    """--init_from must be a student of the same teacher that reads its output the same way (boundaries, guidance
    scale); the target decay, the loss and the teacher's order are training choices and may change between
    segments."""
    from ddpm_mnist.api import load_model
    from ddpm_mnist.training.distill import teacher_digest
    from ddpm_mnist.utils import UserError
    config = load_model(path, precision='fp32').config
    if not config.get('student'):
        raise UserError(f'--init_from {path} is not a distilled student; to start a student from its teacher, leave '
                        '--init_from out (--teacher names the teacher)')
    if teacher_digest(config) != student['teacher_sha256_16']:
        raise UserError(f'--init_from {path} was distilled from another teacher (digest {teacher_digest(config)}) '
                        f'than {student["teacher"]} ({student["teacher_sha256_16"]}); give its teacher with --teacher')
    for key in ('boundaries', 'guidance_scale'):
        if config['student'].get(key) != student.get(key):
            raise UserError(f'--init_from {path} learned with --{key} {config["student"].get(key)}, not '
                            f'{student.get(key)}; continue it with its own --{key}')


if __name__ == '__main__':
    run_cli(main)
