"""Why DDIM with eta 0 trails eta 1 (docs/training.md): DDIM-50 at eta 0 and eta 1 for each model given, from the
same x_T, scored with the project metrics; for the first model also the x0-clipping variants (no clipping, and the
clipped x0 with the model's own noise, diffusers' default) and the class shares of each row. --switch adds, for
the first model, DDIM-50 with eta 1 on the first K steps and 0 after (and the reverse), which locates the part of
the chain where the deterministic sampler loses its quality. --denoiser_bias measures, for each model, how far the
mean of its x0 prediction (clipped, as the samplers use it) on noised test digits is from the digits' own mean at
several timesteps: a calibrated denoiser has none, and a bias at high noise is what the ODE carries to the end.
--eps_scales divides the noise prediction of every DDIM step by each factor lambda (epsilon scaling, Ning et al.
2024, constant in t): how sensitive each sampler is to the scale of the noise it predicts. --guide GUIDE samples
the first model autoguided by a weaker model of the same task, D_guide + w (D - D_guide) (Karras et al. 2024).
--discretization tells the ODE from DDIM's first-order steps through it: DDIM eta 0 at 100 and 200 steps (the
converged ODE), and DDIM-50 at eta 0 and 1 on the DDIM paper's quadratic time spacing (Song et al. 2021, App. D.2:
tau_i = c i^2, here from T-1, where x_T is pure noise, instead of the paper's 0.8 T on a linear schedule) and on
log-SNR spacing (DPM-Solver's choice for low-resolution images, Lu et al. 2022, of which DDIM is the first order).

  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints SHIPPED OTHER.safetensors
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints MODEL.safetensors --switch
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints SHIPPED OTHER.pt --denoiser_bias
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints MODEL.pt --eps_scales 1.005,1.01
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints MODEL --guide WEAKER
  python3 scripts/ode_diagnosis.py --raw_dir ../shared/data/mnist-full --checkpoints MODEL --discretization
"""
import argparse
from typing import Sequence

from ddpm_mnist.cli.arguments import ArgumentParser, add_setting, add_mnist_args
from ddpm_mnist.settings import POSITIVE_NUMBER, at_least, comma_floats, each

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
    add_setting(p, 'num_samples', rule=at_least(10), default=1000, help='images per row (default: %(default)s)')
    p.add_argument('--switch', action='store_true',
                   help='only the eta-switch rows for the first model: eta 1 for the first 10 or 25 of the 50 steps '
                        'then 0, and eta 0 for the first 25 or 40 then 1')
    p.add_argument('--denoiser_bias', action='store_true',
                   help='only the x0-prediction bias of each model on 2,000 noised test digits at T-1 and a few lower '
                        'timesteps (no sampling; seconds per model)')
    add_setting(p, 'eps_scales', rule=each(POSITIVE_NUMBER), type=comma_floats,
                help='only DDIM-50 at eta 0 and 1 on the first model with its noise prediction divided by each of '
                     'these factors (e.g. 0.995,1.005,1.01; 1 is the plain sampler)')
    p.add_argument('--guide', help='only DDIM-50 at eta 0 and 1 on the first model autoguided by this weaker model '
                                   '(same architecture and task), at each --guide_weights')
    add_setting(p, 'guide_weights', rule=each(POSITIVE_NUMBER), type=comma_floats, default=[1.5, 2.0],
                help='autoguidance weights w (1: the model alone) (default: 1.5,2)')
    p.add_argument('--discretization', action='store_true',
                   help='only DDIM eta 0 at 100 and 200 steps and DDIM-50 at eta 0 and 1 on quadratic and on log-SNR '
                        'time spacing, on the first model: how much of the gap is the 50-step discretization')
    p.add_argument('--precision', choices=('auto', 'fp32', 'bf16'), default='auto',
                   help="the Unet's precision when sampling (auto: bf16 on CPUs that have it, else fp32); fp32 checks "
                        'whether bf16 rounding, which the ODE carries to the end, is part of the gap')
    args = p.parse_args(argv)
    return args


# (label, eta of each of the 50 steps): the stochastic sampler on one part of the chain, the deterministic on the rest
SWITCHES = (('eta 1 for steps 1-10, then 0', [1.0] * 10 + [0.0] * 40),
            ('eta 1 for steps 1-25, then 0', [1.0] * 25 + [0.0] * 25),
            ('eta 0 for steps 1-25, then 1', [0.0] * 25 + [1.0] * 25),
            ('eta 0 for steps 1-40, then 1', [0.0] * 40 + [1.0] * 10))


def quadratic_times(total_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """DDIM time pairs on the DDIM paper's quadratic spacing (App. D.2), tau = floor(T (i / S)^2) - 1 for
    i = S, ..., 0: the first step at T-1, most steps at low noise; the last pair ends at -1 (x0)."""
    import numpy as np
    times = sorted({int(np.floor(total_timesteps * (i / steps) ** 2)) - 1 for i in range(steps + 1)}, reverse=True)
    return list(zip(times[:-1], times[1:]))


def logsnr_times(alphas_cumprod, steps: int) -> list[tuple[int, int]]:
    """DDIM time pairs uniform in log-SNR, lambda = log(abar / (1 - abar)) (Lu et al. 2022, DPM-Solver's "logSNR"
    skip type): S times from T-1 down to 0, each the integer timestep nearest its lambda, made distinct by moving a
    repeat one timestep lower, but never so low that the times still to come would run out of timesteps (both ends
    of the schedule hold fewer timesteps than uniform lambda asks for); the last pair ends at -1 (x0), as the
    library's do."""
    import numpy as np
    lam = np.log(alphas_cumprod / (1 - alphas_cumprod))
    times = [len(lam) - 1]
    for i, target in enumerate(np.linspace(lam[-1], lam[0], steps)[1:], start=1):
        nearest = int(np.abs(lam - target).argmin())
        times.append(max(steps - 1 - i, min(nearest, times[-1] - 1)))  # steps - 1 - i times still to come
    return list(zip(times, times[1:] + [-1]))


def ddim50(diffusion, noise, *, eta, clip=True, rederive=True, batch_size=100, eps_scale=1.0, pairs=None):
    """DDIM-50 (or the time `pairs` given) from `noise` with the chosen x0 clipping, per-step noise seeded as
    sampling.loop.sample does; `eta` is one number, or one per step; the noise prediction is divided by `eps_scale`
    in every step's update."""
    import torch

    from ddpm_mnist.sampling.loop import batch_generator
    from ddpm_mnist.sampling.samplers import ddim_step, ddim_times, full_times
    pairs, out = pairs or ddim_times(diffusion.num_timesteps, 50), []
    etas = list(eta) if isinstance(eta, (list, tuple)) else [eta] * len(pairs)
    for start in range(0, len(noise), batch_size):
        generator = batch_generator(0, start, diffusion.device)
        x = noise[start:start + batch_size].to(diffusion.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for (t, t_next), step_eta in zip(pairs, etas):
                prediction = diffusion.model_predictions(x, full_times(t, x), clip_x_start=clip,
                                                         rederive_pred_noise=rederive)
                prediction = prediction._replace(pred_noise=prediction.pred_noise / eps_scale)
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


def autoguided(net, guide, weight):
    """The network as D_guide + w (D - D_guide) on its output (Karras et al. 2024, Eq. 2): the objective's
    prediction is affine in the output at fixed x_t and t, so guiding the output guides the denoiser."""
    from torch import nn

    class Autoguided(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.guide = net, guide

        def forward(self, x, time, x_self_cond=None):
            guided = self.guide(x, time, x_self_cond)
            return guided + weight * (self.net(x, time, x_self_cond) - guided)

    return Autoguided()


def variant_rows(args):
    """(label, eta, option) rows of --discretization (time pairs), --eps_scales (eps scale) or --guide (weight)."""
    if args.discretization:
        return [('linear spacing, 100 steps', 0, dict(steps=('linear', 100))),
                ('linear spacing, 200 steps', 0, dict(steps=('linear', 200))),
                ('quadratic spacing, 50 steps', 0, dict(steps=('quadratic', 50))),
                ('quadratic spacing, 50 steps', 1, dict(steps=('quadratic', 50))),
                ('log-SNR spacing, 50 steps', 0, dict(steps=('logsnr', 50))),
                ('log-SNR spacing, 50 steps', 1, dict(steps=('logsnr', 50)))]
    if args.eps_scales:
        return [(f'noise prediction / {lam:g}', eta, dict(eps_scale=lam)) for lam in args.eps_scales for eta in (0, 1)]
    return [(f'autoguided, w = {w:g}', eta, dict(guide_weight=w)) for w in args.guide_weights for eta in (0, 1)]


def print_variants(args) -> None:
    from ddpm_mnist.api import load_model
    from ddpm_mnist.evaluation.intervals import interval_cell
    from ddpm_mnist.evaluation.reference import digits_evaluator, floor_fid
    from ddpm_mnist.sampling.loop import initial_noise
    from ddpm_mnist.sampling.samplers import ddim_times
    name = args.checkpoints[0]
    model = load_model(None if name == 'SHIPPED' else name, precision=args.precision)
    net = model.diffusion.model
    guide = load_model(args.guide, precision=args.precision).diffusion.model if args.guide else None
    evaluator = digits_evaluator(image_size=model.image_size, raw_dir=args.raw_dir, data_root=args.data_root)
    floor = floor_fid(evaluator, args.num_samples)
    noise = initial_noise(args.num_samples, model.diffusion.channels, model.image_size, seed=0)
    print(f'precision: {args.precision}; {name}' + (f' guided by {args.guide}' if guide else ''))
    print(f'| variant | {"DDIM" if args.discretization else "DDIM-50"} eta | FID [95 %] | FID / floor | mean ink |')
    print('|---|---|---|---|---|')
    alphas_cumprod = model.diffusion.alphas_cumprod.double().cpu().numpy()
    spacings = dict(linear=ddim_times, quadratic=quadratic_times,
                    logsnr=lambda _, steps: logsnr_times(alphas_cumprod, steps))
    for label, eta, option in variant_rows(args):
        model.diffusion.model = autoguided(net, guide, option['guide_weight']) if guide else net
        spacing, steps = option.get('steps', ('linear', 50))
        images = ddim50(model.diffusion, noise, eta=eta, eps_scale=option.get('eps_scale', 1.0),
                        pairs=spacings[spacing](model.diffusion.num_timesteps, steps))
        scores = evaluator.score(images)
        print(f'| {label} | {eta} | {interval_cell(scores, "fid")} | {scores["fid"] / floor:.2f}x '
              f'| {float(images.mean()):.4f} |', flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.denoiser_bias:
        return print_denoiser_bias(args)
    if args.eps_scales or args.guide or args.discretization:
        return print_variants(args)
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
