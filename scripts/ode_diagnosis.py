"""Why DDIM with eta 0 trails eta 1 (docs/training.md): DDIM-50 at eta 0 and eta 1 for each model given, from the
same x_T, scored with the project metrics; for the first model also the x0-clipping variants (no clipping, and the
clipped x0 with the model's own noise, diffusers' default) and the class shares of each row. --switch adds, for
the first model, DDIM-50 with eta 1 on the first K steps and 0 after (and the reverse), which locates the part of
the chain where the deterministic sampler loses its quality. --denoiser_bias measures, for each model, how far the
mean of its x0 prediction (clipped, as the samplers use it) on noised test digits is from the digits' own mean at
several timesteps: a calibrated denoiser has none, and a bias at high noise is what the ODE carries to the end.

  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints SHIPPED OTHER.safetensors
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints MODEL.safetensors --switch
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints SHIPPED OTHER.pt --denoiser_bias
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
    p.add_argument('--denoiser_bias', action='store_true',
                   help='only the x0-prediction bias of each model on 2,000 noised test digits at T-1 and a few lower '
                        'timesteps (no sampling; seconds per model)')
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


BIAS_TIMES = (999, 979, 950, 850, 700, 500)


def denoiser_bias(diffusion, digits, *, seed=0):
    """{t: (mean of the clipped x0 prediction minus the digits' mean, its MSE)} on `digits` in [-1, 1], each noised
    to t with noise from `seed`; a calibrated denoiser's mean prediction equals the data mean at every t."""
    import torch

    from ddpm_mnist.sampling.samplers import full_times
    generator, out = torch.Generator().manual_seed(seed), {}
    for t in BIAS_TIMES:
        if t >= diffusion.num_timesteps:
            continue
        times = full_times(t, digits)
        x_t = diffusion.q_sample(digits, times, torch.randn(digits.shape, generator=generator))
        with torch.inference_mode():
            x0 = diffusion.model_predictions(x_t.contiguous(memory_format=torch.channels_last), times,
                                             clip_x_start=True, rederive_pred_noise=True).pred_x_start.float()
        out[t] = (float(x0.mean() - digits.mean()), float(((x0 - digits) ** 2).mean()))
    return out


def print_denoiser_bias(args) -> None:
    import torch

    from ddpm_mnist.api import load_model
    from ddpm_mnist.datasets import load_split
    from ddpm_mnist.evaluation.classifier import as_training_resolution
    print(f'precision: {args.precision}; 2,000 test digits; x0 mean bias (and MSE) in [-1, 1] units')
    print('| model | ' + ' | '.join(f't = {t}' for t in BIAS_TIMES) + ' |')
    print('|---|' + '---|' * len(BIAS_TIMES))
    images = torch.tensor(load_split('test', raw_dir=args.raw_dir, root=args.data_root)[0][:2000])
    for name in args.checkpoints:
        model = load_model(None if name == 'SHIPPED' else name, precision=args.precision)
        digits = as_training_resolution(images[:, None].float() / 255, model.image_size) * 2 - 1
        bias = denoiser_bias(model.diffusion, digits.to(model.diffusion.device))
        print(f'| {name} | ' + ' | '.join(f'{b:+.4f} ({mse:.3f})' for b, mse in bias.values()) + ' |', flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.denoiser_bias:
        return print_denoiser_bias(args)
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
