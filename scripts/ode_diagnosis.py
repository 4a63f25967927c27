"""Why DDIM with eta 0 trails eta 1 (docs/training.md): DDIM-50 at eta 0 and eta 1 for each model given, from the
same x_T, scored with the project metrics; for the first model also the x0-clipping variants (no clipping, and the
clipped x0 with the model's own noise, diffusers' default) and the class shares of each row.

  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints SHIPPED OTHER.safetensors
"""
import argparse
from typing import Sequence

from ddpm_mnist.settings import ArgumentParser, add_mnist_args

# (label, eta, clip x0, re-derive the noise from the clipped x0): the library's DDIM clips and re-derives
CLIPPING = (('clip + re-derive (the library)', 0.0, True, True), ('clip + re-derive (the library)', 1.0, True, True),
            ('no clipping', 0.0, False, False), ('no clipping', 1.0, False, False),
            ('clipped x0, model noise', 0.0, True, False))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoints', nargs='+', default=['SHIPPED'],
                   help='models to score (SHIPPED: the shipped one; or files, run folders); the clipping variants '
                        'run on the first (default: SHIPPED)')
    add_mnist_args(p)
    p.add_argument('--num_samples', type=int, default=1000, help='images per row (default: %(default)s)')
    args = p.parse_args(argv)
    from ddpm_mnist.settings import at_least, check_flags
    check_flags(vars(args), extra={'num_samples': at_least(10)})
    return args


def ddim50(diffusion, noise, *, eta, clip, rederive, batch_size=100):
    """DDIM-50 from `noise` with the chosen x0 clipping, per-step noise seeded as sampling.loop.sample does."""
    import torch

    from ddpm_mnist.sampling.loop import batch_generator
    from ddpm_mnist.sampling.samplers import build_sampler, full_times
    sampler, out = build_sampler('ddim', diffusion, eta=eta), []
    for start in range(0, len(noise), batch_size):
        sampler.set_timesteps(50)
        generator = batch_generator(0, start, diffusion.device)
        x = noise[start:start + batch_size].to(diffusion.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for t in sampler.timesteps:
                prediction = diffusion.model_predictions(x, full_times(t, x), clip_x_start=clip,
                                                         rederive_pred_noise=rederive)
                x = sampler.step(prediction, t, x, generator)
        out.append(diffusion.unnormalize(x.float()).clamp(0, 1).cpu())
    return torch.cat(out)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.api import load_model
    from ddpm_mnist.evaluation.intervals import interval_cell
    from ddpm_mnist.evaluation.reference import digits_evaluator, floor_fid
    from ddpm_mnist.sampling.loop import initial_noise
    print('| model | x0 clipping | DDIM-50 eta | FID [95 %] | FID / floor | class shares 0-9 (%) |')
    print('|---|---|---|---|---|---|')
    for index, name in enumerate(args.checkpoints):
        model = load_model(None if name == 'SHIPPED' else name)
        evaluator = digits_evaluator(image_size=model.image_size, raw_dir=args.raw_dir, data_root=args.data_root)
        floor = floor_fid(evaluator, args.num_samples)
        noise = initial_noise(args.num_samples, model.diffusion.channels, model.image_size, seed=0)
        for label, eta, clip, rederive in (CLIPPING if index == 0 else CLIPPING[:2]):
            scores = evaluator.score(ddim50(model.diffusion, noise, eta=eta, clip=clip, rederive=rederive))
            shares = ' '.join(f'{100 * s:.1f}' for s in scores['class_shares'])
            print(f'| {name} | {label} | {eta:g} | {interval_cell(scores, "fid")} | {scores["fid"] / floor:.2f}x '
                  f'| {shares} |', flush=True)


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
