"""Every sampler of the registry against a reference implementation on the same tiny model, noise and steps:
DDIM against diffusers' DDIMScheduler, DDPM against DDPMScheduler and the library's own DDIM time pairs, the
diffusers-backed solvers against a plain diffusers loop fed the raw Unet output in the model's own objective."""
import pytest
import torch

from ddpm_mnist.model.network import build_diffusion
from conftest import sample_with
from ddpm_mnist.sampling.registry import DIFFUSION_SAMPLERS, SAMPLERS, SamplerSettings, grid_name
from ddpm_mnist.sampling.samplers import build_sampler, ddim_times
from ddpm_mnist.sampling.loop import denoise, initial_noise

diffusers = pytest.importorskip('diffusers')

T = 100
PREDICTION_TYPE = {'pred_noise': 'epsilon', 'pred_x0': 'sample', 'pred_v': 'v_prediction'}
DETERMINISTIC_TOLERANCE = 1e-4  # fp32
STOCHASTIC_TOLERANCE = 1e-3     # same noise; more steps, same maths in another order


def tiny(objective='pred_v', timesteps=T, seed=0):
    torch.manual_seed(seed)
    config = dict(model=dict(dim=8, dim_mults=[1, 2], channels=1),
                  diffusion=dict(image_size=16, timesteps=timesteps, beta_schedule='cosine', objective=objective))
    return build_diffusion(config).eval()


def x_T(n=3):
    return initial_noise(n, 1, 16, seed=1)


def ours(diffusion, name, steps, eta=0.0, clip_x0=True, seed=7):
    sampler = build_sampler(SamplerSettings.resolve(name, steps, eta, total_timesteps=diffusion.num_timesteps),
                            diffusion)
    return denoise(diffusion, sampler, x_T(), torch.Generator().manual_seed(seed), clip_x0)


def unet_output(diffusion, x, t):
    return diffusion.model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))


def betas(diffusion):
    return diffusion.betas.double().numpy()


def report(ours_out, reference, tolerance, what):
    """Max abs difference, relative to the output's scale where it exceeds 1 (the tiny untrained model's
    unclipped x0 can reach tens, and fp32 rounding scales with it)."""
    difference, scale = (ours_out - reference).abs().max().item(), max(1.0, reference.abs().max().item())
    print(f'{what}: max abs difference {difference:.2e} (output scale {scale:.1f})')
    assert difference < tolerance * scale, f'{what}: max abs difference {difference:.2e} at scale {scale:.1f}'


# ---------------------------------------------------------------- DDIM time pairs

LIBRARY_ROUNDS_DOWN = [26, 52, 60, 104, 120, 180, 202, 206]  # S where the float32 linspace lands one step lower


def library_time_pairs(steps, total=1000):
    """The (t, t_next) pairs the library's own ddim_sample visits, recorded from a run."""
    diffusion = tiny(timesteps=total)
    diffusion.sampling_timesteps, visited = steps, []

    def record(img, t, *args, **kwargs):
        visited.append(int(t[0]))
        return torch.zeros_like(img), torch.zeros_like(img)
    diffusion.model_predictions = record
    diffusion.ddim_sample((1, 1, 16, 16))
    return list(zip(visited, visited[1:] + [-1]))


@pytest.mark.parametrize('steps', [1, 2, 10, 50, 1000, *LIBRARY_ROUNDS_DOWN])
def test_ddim_times_are_the_pairs_the_library_visits(steps):
    assert ddim_times(1000, steps) == library_time_pairs(steps)


def test_ddim_times_are_the_library_pairs_across_step_counts():
    """Against the pairs the library's own loop visits (not a copy of its formula), over step counts spread
    across 1..T; every S of 1..T also visits S distinct timesteps, the last one 0."""
    for steps in range(1, 1001, 37):
        assert ddim_times(1000, steps) == library_time_pairs(steps), steps
    for steps in range(1, 1001):
        pairs = ddim_times(1000, steps)
        assert len({t for t, _ in pairs}) == steps and pairs[0][0] == 999 and pairs[-1][1] == -1, steps


@pytest.mark.parametrize('steps', [1, 2, 10, 50, 200, 1000])
def test_log_snr_spacing_of_the_discretization_rows(steps):
    """scripts/ode_diagnosis.py's log-SNR spacing: S distinct descending timesteps from T-1 to 0, then x0 (-1); at
    10 and 50 steps the low-noise third is even in lambda (at 200 and more both ends run out of timesteps)."""
    import numpy as np
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import cosine_beta_schedule
    from conftest import load_script
    alphas_cumprod = np.cumprod(1 - cosine_beta_schedule(1000).double().numpy())
    pairs = load_script('ode_diagnosis').logsnr_times(alphas_cumprod, steps)
    times = [t for t, _ in pairs]
    assert len(pairs) == steps and times[0] == 999 and pairs[-1] == (times[-1], -1) and min(times) >= 0
    assert all(a > b for a, b in zip(times, times[1:])) and [s for _, s in pairs[:-1]] == times[1:]
    if steps in (10, 50):
        lam = np.log(alphas_cumprod / (1 - alphas_cumprod))
        even = (lam[0] - lam[-1]) / (steps - 1)
        assert times[-1] == 0 and np.allclose(np.diff(lam[times[-steps // 3:]]), even, rtol=0.3)


# ---------------------------------------------------------------- DDPM and DDIM against diffusers

@pytest.mark.parametrize('objective', ['pred_v', 'pred_noise', 'pred_x0'])
@pytest.mark.parametrize('steps,eta', [(10, 0.0), (25, 0.0), (20, 1.0), (50, 0.5)])
def test_ddim_matches_diffusers_ddim_scheduler(objective, steps, eta):
    """diffusers' 'trailing' spacing steps t -> t - T/S, the library's pairs when S divides T; both clip x0 to
    [-1, 1] and re-derive the noise from the clipped x0 (use_clipped_model_output)."""
    diffusion = tiny(objective)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=betas(diffusion), clip_sample=True,
                                        set_alpha_to_one=True, prediction_type=PREDICTION_TYPE[objective],
                                        timestep_spacing='trailing')
    scheduler.set_timesteps(steps)
    assert [int(t) for t in scheduler.timesteps] == [t for t, _ in ddim_times(T, steps)]
    generator, x = torch.Generator().manual_seed(7), x_T()
    with torch.inference_mode():
        for t in scheduler.timesteps:
            noise = torch.randn(x.shape, generator=generator) if eta > 0 and t > T // steps - 1 else None
            x = scheduler.step(unet_output(diffusion, x, t), t, x, eta=eta, use_clipped_model_output=True,
                               variance_noise=noise).prev_sample
    tolerance = DETERMINISTIC_TOLERANCE if eta == 0 else STOCHASTIC_TOLERANCE
    report(ours(diffusion, 'ddim', steps, eta), x, tolerance, f'DDIM {steps} eta {eta} {objective}')


@pytest.mark.parametrize('objective', ['pred_v', 'pred_noise'])
def test_ddpm_matches_diffusers_ddpm_scheduler(objective):
    diffusion = tiny(objective)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=betas(diffusion), clip_sample=True,
                                        variance_type='fixed_small', prediction_type=PREDICTION_TYPE[objective])
    scheduler.set_timesteps(T)
    generator, x = torch.Generator().manual_seed(7), x_T()
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x = scheduler.step(unet_output(diffusion, x, t), t, x, generator=generator).prev_sample
    report(ours(diffusion, 'ddpm', T), x, STOCHASTIC_TOLERANCE, f'DDPM {objective}')


def test_ddim_with_eta_1_and_all_steps_is_ddpm():
    diffusion = tiny()
    report(ours(diffusion, 'ddim', T, eta=1.0), ours(diffusion, 'ddpm', T), 1e-4, 'DDIM T eta 1 vs DDPM')


# ---------------------------------------------------------------- the diffusers-backed solvers

SOLVERS = [name for name in DIFFUSION_SAMPLERS if name not in ('ddpm', 'ddim')]  # the diffusers-backed ones


def reference_solver_loop(diffusion, name, steps, objective, seed=7):
    """The plain diffusers loop: same scheduler settings, fed the raw Unet output in the model's objective."""
    ours_sampler = build_sampler(SamplerSettings.resolve(name, steps, total_timesteps=diffusion.num_timesteps),
                                 diffusion)
    config = dict(ours_sampler.scheduler.config, prediction_type=PREDICTION_TYPE[objective])
    scheduler = type(ours_sampler.scheduler).from_config(config)
    scheduler.set_timesteps(steps)
    generator, x = torch.Generator().manual_seed(seed), x_T() * scheduler.init_noise_sigma
    stochastic = SAMPLERS[name].stochastic
    with torch.inference_mode():
        for t in scheduler.timesteps:
            output = unet_output(diffusion, scheduler.scale_model_input(x, t), t)
            x = scheduler.step(output, t, x, **(dict(generator=generator) if stochastic else {})).prev_sample
    return x


@pytest.mark.parametrize('name', SOLVERS)
@pytest.mark.parametrize('steps', [5, 20])
def test_solver_matches_plain_diffusers_loop(name, steps):
    diffusion = tiny('pred_v')
    tolerance = STOCHASTIC_TOLERANCE if SAMPLERS[name].stochastic else DETERMINISTIC_TOLERANCE
    report(ours(diffusion, name, steps, clip_x0=False), reference_solver_loop(diffusion, name, steps, 'pred_v'),
           tolerance, f'{name} {steps} steps')


@pytest.mark.parametrize('objective', ['pred_noise', 'pred_x0'])
def test_solver_takes_the_objective_from_the_model(objective):
    diffusion = tiny(objective)
    report(ours(diffusion, 'dpmpp_2m', 10, clip_x0=False),
           reference_solver_loop(diffusion, 'dpmpp_2m', 10, objective), DETERMINISTIC_TOLERANCE,
           f'dpmpp_2m {objective}')


@pytest.mark.parametrize('name', DIFFUSION_SAMPLERS)
def test_every_sampler_clips_x0_and_ends_in_range(name):
    """x0 is clipped at every step as the library's DDIM does, so the final image lies in [-1, 1]."""
    out = ours(tiny('pred_noise'), name, 10)
    assert out.isfinite().all() and out.abs().max() <= 1 + 1e-5


@pytest.mark.parametrize('name', [n for n in DIFFUSION_SAMPLERS if SAMPLERS[n].stochastic])
def test_stochastic_samplers_are_seeded(name):
    diffusion = tiny()
    first = sample_with(diffusion, strategy=name, num_samples=4, batch_size=2, steps=10, eta=1.0, seed=3)
    again = sample_with(diffusion, strategy=name, num_samples=4, batch_size=2, steps=10, eta=1.0, seed=3)
    other_noise = sample_with(diffusion, strategy=name, num_samples=4, batch_size=2, steps=10, eta=1.0, seed=3,
                         noise=initial_noise(4, 1, 16, seed=3) + 0)
    assert torch.equal(first, again) and torch.equal(first, other_noise)
    other_seed = sample_with(diffusion, strategy=name, num_samples=4, batch_size=2, steps=10, eta=1.0, seed=4,
                        noise=initial_noise(4, 1, 16, seed=3))
    assert not torch.equal(first, other_seed)  # same x_T, other per-step noise


def test_registry_names_grids_and_labels_uniquely():
    names = {grid_name(name, 10, 0.0) for name in SAMPLERS}
    assert len(names) == len(SAMPLERS)
    assert grid_name('ddpm', 1000) == 'ddpm_steps1000' and grid_name('ddim', 50, 0.0) == 'ddim_steps50_eta0.0'


def test_initial_noise_of_the_first_images_does_not_depend_on_how_many_are_drawn():
    # edit_benchmark's batch cache (and paired x_T across N) rely on this
    assert torch.equal(initial_noise(37, 1, 16, seed=5)[:8], initial_noise(8, 1, 16, seed=5))
    assert not torch.equal(initial_noise(8, 1, 16, seed=5), initial_noise(8, 1, 16, seed=6))
