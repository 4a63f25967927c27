"""Why DDIM with eta 0 trails eta 1 (docs/training.md): DDIM-50 at eta 0 and eta 1 for each model given, from the
same x_T, scored with the project metrics; for the first model also the x0-clipping variants (no clipping, and the
clipped x0 with the model's own noise, diffusers' default) and the class shares of each row. --switch adds, for
the first model, DDIM-50 with eta 1 on the first K steps and 0 after (and the reverse), which locates the part of
the chain where the deterministic sampler loses its quality.

  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints SHIPPED OTHER.safetensors
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints MODEL.safetensors --switch
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
    p.add_argument('--switch', action='store_true',
                   help='only the eta-switch rows for the first model: eta 1 for the first 10 or 25 of the 50 steps '
                        'then 0, and eta 0 for the first 25 or 40 then 1')
    p.add_argument('--precision', choices=('auto', 'fp32', 'bf16'), default='auto',
                   help="the Unet's precision when sampling (auto: bf16 on CPUs that have it, else fp32); fp32 checks "
                        'whether bf16 rounding, which the ODE carries to the end, is part of the gap')
    args = p.parse_args(argv)
    from ddpm_mnist.settings import at_least, check_flags
    check_flags(vars(args), extra={'num_samples': at_least(10)})
    return args


# (label, eta of each of the 50 steps): the stochastic sampler on one part of the chain, the deterministic on the rest
SWITCHES = (('eta 1 for steps 1-10, then 0', [1.0] * 10 + [0.0] * 40),
            ('eta 1 for steps 1-25, then 0', [1.0] * 25 + [0.0] * 25),
            ('eta 0 for steps 1-25, then 1', [0.0] * 25 + [1.0] * 25),
            ('eta 0 for steps 1-40, then 1', [0.0] * 40 + [1.0] * 10))


def ddim50(diffusion, noise, *, eta, clip=True, rederive=True, batch_size=100):
    """DDIM-50 from `noise` with the chosen x0 clipping, per-step noise seeded as sampling.loop.sample does; `eta`
    is one number, or one per step."""
    import torch

    from ddpm_mnist.sampling.loop import batch_generator
    from ddpm_mnist.sampling.samplers import ddim_step, ddim_times, full_times
    pairs, out = ddim_times(diffusion.num_timesteps, 50), []
    etas = list(eta) if isinstance(eta, (list, tuple)) else [eta] * len(pairs)
    for start in range(0, len(noise), batch_size):
        generator = batch_generator(0, start, diffusion.device)
        x = noise[start:start + batch_size].to(diffusion.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for (t, t_next), step_eta in zip(pairs, etas):
                prediction = diffusion.model_predictions(x, full_times(t, x), clip_x_start=clip,
                                                         rederive_pred_noise=rederive)
                x = ddim_step(diffusion, prediction, t, t_next, step_eta, generator)
        out.append(diffusion.unnormalize(x.float()).clamp(0, 1).cpu())
    return torch.cat(out)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from ddpm_mnist.api import load_model
    from ddpm_mnist.evaluation.intervals import interval_cell
    from ddpm_mnist.evaluation.reference import digits_evaluator, floor_fid
    from ddpm_mnist.sampling.loop import initial_noise
    print(f'precision: {args.precision}')
    print(f'| model | {"eta per step" if args.switch else "x0 clipping"} | DDIM-50 eta | FID [95 %] | FID / floor '
          '| class shares 0-9 (%) |')
    print('|---|---|---|---|---|---|')
    for index, name in enumerate(args.checkpoints):
        model = load_model(None if name == 'SHIPPED' else name, precision=args.precision)
        evaluator = digits_evaluator(image_size=model.image_size, raw_dir=args.raw_dir, data_root=args.data_root)
        floor = floor_fid(evaluator, args.num_samples)
        noise = initial_noise(args.num_samples, model.diffusion.channels, model.image_size, seed=0)
        rows = [(label, eta, True, True) for label, eta in SWITCHES] if args.switch else (
            CLIPPING if index == 0 else CLIPPING[:2])
        for label, eta, clip, rederive in rows:
            scores = evaluator.score(ddim50(model.diffusion, noise, eta=eta, clip=clip, rederive=rederive))
            shares = ' '.join(f'{100 * s:.1f}' for s in scores['class_shares'])
            shown = 'switched' if isinstance(eta, list) else f'{eta:g}'
            print(f'| {name} | {label} | {shown} | {interval_cell(scores, "fid")} | {scores["fid"] / floor:.2f}x '
                  f'| {shares} |', flush=True)
        if args.switch:
            break


if __name__ == '__main__':
    from ddpm_mnist.utils import run_cli
    run_cli(main)
