"""The recipe levers of the training study: attention layout, native 28 px, learning-rate schedule, min-SNR,
the time limit, continuing from weights (--init_from) and the images-seen count."""
import copy
import json
import math

import numpy as np
import pytest
import torch
from denoising_diffusion_pytorch import Unet
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import LinearAttention

import inference_comparison
import train_ddpm_mnist
from conftest import assert_one_line_error, load_script, run_main, train_argv
from ddpm_mnist.model.network import LowestAttentionUnet, build_diffusion, build_unet
from ddpm_mnist.settings import PRESETS
from ddpm_mnist.model.checkpoints import export_ema, images_seen, load_checkpoint, load_model
from ddpm_mnist.model.config import infer_unet_arch
from ddpm_mnist.sampling.loop import sample
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.training.run_folder import milestones
from ddpm_mnist.training.trainer import MnistTrainer
from ddpm_mnist.utils import file_digest

LEAN = ['--image_size', '28', '--attention', 'lowest']


def test_lowest_attention_unet_drops_only_the_outer_linear_attention():
    library = Unet(dim=8, dim_mults=(1, 2, 2), channels=1)
    lean = LowestAttentionUnet(dim=8, dim_mults=(1, 2, 2), channels=1)
    assert any(isinstance(m, LinearAttention) for m in library.modules())
    assert not any(isinstance(m, LinearAttention) for m in lean.modules())
    lean_keys, library_keys = set(lean.state_dict()), set(library.state_dict())
    assert lean_keys < library_keys  # a subset: the library's names, less the linear attention's weights
    assert all('.2.' in k for k in library_keys - lean_keys)
    assert infer_unet_arch(lean.state_dict())['attention'] == 'lowest'
    assert infer_unet_arch(library.state_dict())['attention'] == 'library'
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    assert lean(x, t).shape == (2, 1, 28, 28)  # 28 -> 14 -> 7 and back


def test_lean_run_trains_loads_and_samples_at_28_px(tmp_path, image_folder, capsys):
    results = tmp_path / 'lean'
    code, out, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=LEAN), capsys)
    assert code == 0, err
    diffusion, config, info = load_model(results / 'model-2.pt')
    assert type(diffusion.model) is LowestAttentionUnet and config['model']['attention'] == 'lowest'
    assert diffusion.image_size == (28, 28) and info['images_seen'] == 4 * 16
    with torch.inference_mode():
        assert diffusion.sample(batch_size=2).shape == (2, 1, 28, 28)
    # the other layout's settings are refused on the same folder, naming both
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=6,
                                                              extra=['--image_size', '28']), capsys)
    assert_one_line_error(code, err, 'attention: lowest vs library')


def trainer_for(image_folder, tmp_path, **kwargs):
    from ddpm_mnist.model.network import build_diffusion
    from ddpm_mnist.settings import PRESETS
    config = dict(PRESETS['small'], versions={'denoising_diffusion_pytorch': 'x'})
    diffusion = build_diffusion({'model': dict(dim=8, dim_mults=[1, 2], channels=1), 'diffusion': config['diffusion']})
    return MnistTrainer(diffusion, str(image_folder), config=config, num_workers=0, train_batch_size=16,
                        results_folder=str(tmp_path / 'lr'), calculate_fid=False, num_samples=4, train_lr=1e-3,
                        train_num_steps=100, **kwargs)


def test_learning_rate_warm_up_and_cosine_decay(image_folder, tmp_path):
    trainer = trainer_for(image_folder, tmp_path, lr_warmup_steps=10, lr_schedule='cosine')
    lr_at = trainer.step_parts().learning_rate  # the schedule the training step follows
    assert lr_at(0) == pytest.approx(1e-4) and lr_at(4) == pytest.approx(5e-4)
    assert lr_at(9) == pytest.approx(1e-3)
    assert lr_at(55) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_at(100) == pytest.approx(0.0, abs=1e-12) and lr_at(500) == pytest.approx(0, abs=1e-12)
    constant = trainer_for(image_folder, tmp_path).step_parts().learning_rate
    assert {constant(s) for s in (0, 50, 99)} == {1e-3}


def test_schedule_reaches_the_optimiser(tmp_path, image_folder, capsys):
    results = tmp_path / 'warm'
    extra = ['--lr_warmup_steps', '8', '--train_lr', '1e-3']
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=extra), capsys)[0] == 0
    groups = load_checkpoint(results / 'model-2.pt')['opt']['param_groups']
    assert groups[0]['lr'] == pytest.approx(1e-3 * 4 / 8)  # the rate the 4th step ran at (each step sets its own)


def test_min_snr_gamma_sets_the_library_loss_weight(tmp_path, image_folder, capsys):
    results = tmp_path / 'snr'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=['--min_snr_gamma', '5']),
                    capsys)[0] == 0
    diffusion, config, _ = load_model(results / 'model-1.pt')
    snr = diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)
    assert config['diffusion']['min_snr_gamma'] == 5
    assert torch.allclose(diffusion.loss_weight, snr.clamp(max=5) / (snr + 1))  # pred_v with min-SNR-5


def test_snr_floor_keeps_the_high_noise_weight(tmp_path, image_folder, capsys):
    """--snr_floor 1 (Salimans & Ho's truncated SNR, on top of min-SNR-5): the weight on the x0 error is
    max(min(snr, 5), 1), so at high noise, where the library's weight vanishes, it stays 1."""
    results = tmp_path / 'floor'
    extra = ['--min_snr_gamma', '5', '--snr_floor', '1']
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=extra), capsys)[0] == 0
    diffusion, config, _ = load_model(results / 'model-1.pt')  # sampling rebuilds the weight from the config
    snr = diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)
    assert config['diffusion']['snr_floor'] == 1
    x0_weight = diffusion.loss_weight * (snr + 1)  # pred_v: |v - v'|^2 = (snr + 1) |x0 - x0'|^2
    assert torch.allclose(x0_weight, snr.clamp(max=5).clamp(min=1), rtol=1e-4)
    assert x0_weight[-1] == pytest.approx(1, rel=1e-4) and x0_weight[0] == pytest.approx(5, rel=1e-4)


def test_input_perturbation_noises_the_input_but_not_the_target(tmp_path, image_folder, capsys):
    """--input_perturbation 0.1 (DDPM-IP, Ning et al. 2023): the network sees q_sample(x0, t, eps + 0.1 xi) and is
    scored against the v of the unperturbed eps; q_sample outside the loss (SDEdit, sampling) is unchanged. The
    run records it in the config, and its checkpoint loads and samples as any other."""
    from ddpm_mnist.model.network import build_diffusion
    results = tmp_path / 'ip'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=['--input_perturbation', '0.1']),
                    capsys)[0] == 0
    diffusion, config, _ = load_model(results / 'model-1.pt')
    assert config['diffusion']['input_perturbation'] == 0.1 and type(diffusion).__name__ == 'GaussianDiffusion'
    trained = build_diffusion(config, training=True)
    trained.model.load_state_dict(diffusion.model.state_dict())
    x0, t = torch.rand(4, 1, 32, 32) * 2 - 1, torch.tensor([0, 5, 10, trained.num_timesteps - 1])
    noise = torch.randn_like(x0)
    torch.manual_seed(0)
    loss = trained.p_losses(x0, t, noise=noise)
    torch.manual_seed(0)
    x_t = trained.q_sample(x0, t, noise + 0.1 * torch.randn_like(noise))  # the perturbed input, same xi
    with torch.no_grad():
        error = (trained.model(x_t, t) - trained.predict_v(x0, t, noise)) ** 2
    assert loss.item() == pytest.approx((error.mean((1, 2, 3)) * trained.loss_weight[t]).mean().item(), rel=1e-5)
    assert torch.equal(trained.q_sample(x0, t, noise), diffusion.q_sample(x0, t, noise))


def test_post_hoc_ema_keeps_snapshots_and_synthesises_lengths(tmp_path, image_folder, idx_dir, capsys):
    results = tmp_path / 'phema'
    argv = train_argv(image_folder, results, steps=40, every=20, extra=['--post_hoc_ema_every', '10'])
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert code == 0, err
    assert len(list((results / 'post_hoc_ema').glob('*.pt'))) == 2 * 4  # two EMA profiles, steps 10, 20, 30, 40
    script = load_script('post_hoc_ema')
    code, out, err = run_main(script.main, ['--results_folder', str(results), '--raw_dir', str(idx_dir),
                                            '--sigma_rels', '0.05,0.25', '--num_samples', '10'], capsys)
    assert code == 0, err
    assert 'library EMA, decay' in out and '| post-hoc, sigma_rel 0.25 |' in out
    short, long = (load_model(results / 'post_hoc_ema' / f'synth-{s}.safetensors')[0] for s in ('0.05', '0.25'))
    assert short.image_size == (32, 32)  # loaded with the run's config, from the .json beside the weights
    assert not torch.equal(short.model.init_conv.weight, long.model.init_conv.weight)


def test_max_minutes_stops_at_a_milestone_and_resumes(tmp_path, image_folder, capsys):
    results = tmp_path / 'timed'
    argv = train_argv(image_folder, results, steps=8, extra=['--max_minutes', '1e-6'])
    code, out, _ = run_main(train_ddpm_mnist.main, argv, capsys)
    assert code == 0 and 'stopped at step 2 of 8' in out and milestones(results) == [1]
    code, out, _ = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=8), capsys)
    assert code == 0 and milestones(results) == [1, 2, 3, 4]
    assert load_checkpoint(results / 'model-4.pt')['images_seen'] == 8 * 16


def test_init_from_continues_weights_and_carries_the_history(tmp_path, trained_run, image_folder, capsys):
    exported = export_ema(trained_run / 'model-2.pt', tmp_path / 'parent')
    half = export_ema(trained_run / 'model-2.pt', tmp_path / 'parent-fp16', dtype=torch.float16)  # a wide Unet's
    for i, parent in enumerate((trained_run / 'model-2.pt', half, exported)):
        results = tmp_path / f'child-{i}'
        argv = train_argv(image_folder, results, steps=2, extra=['--init_from', str(parent), '--train_lr', '1e-12'])
        code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
        assert code == 0, err
        ckpt = load_checkpoint(results / 'model-1.pt')
        assert ckpt['config']['init_from']['file'] == parent.name
        assert ckpt['config']['training']['lr_warmup_steps'] == 200
        # a learning rate of ~0 keeps the online weights where the parent left them
        child, _, _ = load_model(results / 'model-1.pt', use_ema=False)
        source, _, _ = load_model(parent, use_ema=not parent.suffix == '.pt')
        for key, value in source.model.state_dict().items():
            assert torch.allclose(child.model.state_dict()[key], value, atol=1e-6), key
        export = json.loads(export_ema(results / 'model-1.pt', tmp_path / f'out-{i}')
                            .with_suffix('.json').read_text())
        segments = export['provenance']['segments']
        assert len(segments) == 2 and [s['images_seen'] for s in segments] == [64, 32]
        assert export['provenance']['total_images_seen'] == 96
        assert ckpt['ema']['step'] >= 4  # the EMA keeps counting from the parent's steps
    # resuming the child without repeating --init_from keeps its parent and warm-up
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert code == 0, err
    assert load_checkpoint(results / 'model-2.pt')['config']['init_from']['file'] == exported.name


def test_init_from_grows_attention_close_to_the_parent(tmp_path, image_folder, capsys):
    """A lowest-attention parent continues as a Unet with attention at every level: the parent's weights are all
    kept and the new layers start at a small output gain, so the child starts close to the parent's function; the
    other way round (dropping layers) is refused."""
    parent_run, child_run = tmp_path / 'lowest', tmp_path / 'grown'
    argv = train_argv(image_folder, parent_run, steps=2, extra=['--attention', 'lowest'])
    assert run_main(train_ddpm_mnist.main, argv, capsys)[0] == 0
    extra = ['--attention', 'library', '--init_from', str(parent_run / 'model-1.pt'), '--train_lr', '1e-12']
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, child_run, steps=2, extra=extra), capsys)
    assert code == 0, err
    assert load_checkpoint(child_run / 'model-1.pt')['config']['init_from']['grown'] == ['attention: lowest vs library']
    parent, _, _ = load_model(parent_run / 'model-1.pt', use_ema=False)
    child, _, _ = load_model(child_run / 'model-1.pt', use_ema=False)
    assert sum(p.numel() for p in child.parameters()) > sum(p.numel() for p in parent.parameters())
    for key, value in parent.model.state_dict().items():  # every weight of the parent kept
        assert torch.allclose(child.model.state_dict()[key], value, atol=1e-6), key
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([0, 500, 999])
    with torch.inference_mode():
        grown, original = child.model(x, t), parent.model(x, t)
    assert 0 < (grown - original).norm() < 0.5 * original.norm()
    extra = ['--attention', 'lowest', '--init_from', str(child_run / 'model-1.pt')]
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, tmp_path / 'shrunk', extra=extra), capsys)
    assert_one_line_error(code, err, 'another model than this run', 'attention: library vs lowest')


def test_self_conditioning_grows_exactly_from_its_parent_and_samples_with_its_estimate(tmp_path, image_folder,
                                                                                      capsys):
    """--self_condition on continues an 'off' parent with the estimate's input weights at zero (exactly the parent's
    function at the first step); the sampling loop hands every step the previous x0 estimate (None at the first);
    the other way round, and self-conditioning on a conditional model, are refused in one line."""
    parent_run, child_run = tmp_path / 'plain', tmp_path / 'selfcond'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, parent_run, steps=2), capsys)[0] == 0
    extra = ['--self_condition', 'on', '--init_from', str(parent_run / 'model-1.pt'), '--train_lr', '1e-12']
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, child_run, steps=2, extra=extra), capsys)
    assert code == 0, err
    ckpt = load_checkpoint(child_run / 'model-1.pt')
    assert ckpt['config']['init_from']['grown'] == ['self_condition: False vs True']
    parent, _, _ = load_model(parent_run / 'model-1.pt', use_ema=False)
    child, _, _ = load_model(child_run / 'model-1.pt', use_ema=False)
    assert child.self_condition and not parent.self_condition
    assert infer_unet_arch(child.model.state_dict())['self_condition'] is True
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([0, 500, 999])
    with torch.inference_mode():
        assert torch.allclose(child.model(x, t, torch.randn_like(x)), parent.model(x, t), atol=1e-5)
    seen = []
    forward = child.model.forward
    child.model.forward = lambda x, t, x_self_cond=None: seen.append(x_self_cond) or forward(x, t, x_self_cond)
    sample(child, SamplerSettings.resolve('ddim', 2, 0.0, total_timesteps=child.num_timesteps), num_samples=2,
           batch_size=2)
    assert seen[0] is None and seen[1] is not None and seen[1].shape == (2, 1, 32, 32)
    extra = ['--self_condition', 'off', '--init_from', str(child_run / 'model-1.pt')]
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, tmp_path / 'shrunk', extra=extra), capsys)
    assert_one_line_error(code, err, 'another model than this run', 'self_condition: True vs False')
    extra = ['--self_condition', 'maybe']
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, tmp_path / 'x', extra=extra), capsys)
    assert code == 2 and 'self_condition' in err


def test_stable_targets_regress_on_the_posterior_mean_of_x0(tmp_path, image_folder, capsys):
    """--stable_targets N: at low noise the target is the usual one (the true x0 dominates), at the highest noise the
    mean of the reference batch; a run trains and records it; it is refused where its target is not the library's v."""
    config = copy.deepcopy(PRESETS['shipped'])
    config['diffusion']['stable_targets'] = 255
    diffusion = build_diffusion(config, training=True)
    images = torch.randint(0, 256, (1000, 1, 28, 28), dtype=torch.uint8)
    diffusion.reference_images = images
    x0 = diffusion.normalize(images[:4].float() / 255)
    t = torch.tensor([0, 20, 999, 999])
    noise = torch.randn_like(x0)
    torch.manual_seed(0)
    mean = diffusion.posterior_mean(diffusion.q_sample(x0, t, noise), t, x0)
    assert torch.allclose(mean[:2], x0[:2], atol=1e-4)  # low noise: the true x0
    torch.manual_seed(0)
    drawn = diffusion.normalize(images[torch.randint(1000, (255,))].float() / 255)
    reference_mean = torch.cat([x0, drawn]).mean(0)
    assert torch.allclose(mean[2], reference_mean, atol=0.05) and torch.allclose(mean[3], reference_mean, atol=0.05)
    with torch.no_grad():  # the loss's v target is the one of (x0_hat, the noise x_t implies), not the true x0's
        loss = diffusion.p_losses(x0, t, noise=noise)
    assert torch.isfinite(loss)
    results = tmp_path / 'stf'
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2,
                                                              extra=['--stable_targets', '16']), capsys)
    assert code == 0, err
    assert load_checkpoint(results / 'model-1.pt')['config']['diffusion']['stable_targets'] == 16
    for extra, named in ((['--objective', 'pred_noise'], 'pred_v'), (['--conditional'], 'unconditional'),
                         (['--input_perturbation', '0.1'], 'input_perturbation')):
        argv = train_argv(image_folder, tmp_path / 'refused', extra=['--stable_targets', '16', *extra])
        assert_one_line_error(*run_main(train_ddpm_mnist.main, argv, capsys)[::2], '--stable_targets', named)


def test_log_normal_noise_levels_draw_the_timesteps_of_edm_sigmas(tmp_path, image_folder, capsys):
    """--noise_levels P_MEAN,P_STD: training timesteps whose sigma_t = sqrt((1 - a_t) / a_t) is log-normal (EDM), the
    uniform library draw otherwise; a run records it."""
    config = copy.deepcopy(PRESETS['shipped'])
    config['diffusion']['noise_levels'] = [-1.2, 1.2]
    diffusion = build_diffusion(config, training=True)
    torch.manual_seed(0)
    t = diffusion.random_times(20_000)
    assert t.dtype == torch.long and 0 <= t.min() and t.max() <= 999
    a = diffusion.alphas_cumprod[t]
    log_sigma = 0.5 * torch.log((1 - a) / a)
    assert abs(log_sigma.median().item() + 1.2) < 0.05 and abs(log_sigma.std().item() - 1.2) < 0.1
    plain = build_diffusion(copy.deepcopy(PRESETS['shipped']), training=True)
    assert abs(plain.random_times(20_000).float().mean().item() - 499.5) < 10  # the library's uniform draw
    results = tmp_path / 'lognormal'
    # a value that starts with '-' is a value, no '=' needed
    argv = train_argv(image_folder, results, steps=2, extra=['--noise_levels', '-1.2,1.2'])
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert code == 0, err
    assert load_checkpoint(results / 'model-1.pt')['config']['diffusion']['noise_levels'] == [-1.2, 1.2]


def test_init_from_other_model_is_refused(tmp_path, trained_run, image_folder, capsys):
    results = tmp_path / 'wrong'
    extra = ['--init_from', str(trained_run / 'model-2.pt'), '--unet_dim', '16']
    argv = train_argv(image_folder, results, extra=extra)
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, 'another model than this run', 'dim: 8 vs 16')
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=[
        '--init_from', str(tmp_path / 'missing.pt')]), capsys)
    assert_one_line_error(code, err, 'no such file')
    assert not results.exists()


@pytest.mark.parametrize('which', ['exported', 'milestone'])
def test_init_from_broken_weights_is_refused_before_anything_is_written(tmp_path, trained_run, image_folder, capsys,
                                                                        which):
    """NaN weights never start a run: not as an export, not as a milestone's online weights."""
    if which == 'exported':
        parent = export_ema(trained_run / 'model-2.pt', tmp_path / 'exported')
        from safetensors.torch import load_file, save_file
        state = load_file(parent)
        first = next(iter(state))
        state[first] = torch.full_like(state[first], float('nan'))
        save_file(state, str(parent))
    else:
        ckpt = load_checkpoint(trained_run / 'model-2.pt')
        first = next(k for k in ckpt['model'] if k.startswith('model.') and k.endswith('.weight'))  # a Unet weight
        ckpt['model'][first] = torch.full_like(ckpt['model'][first], float('nan'))
        parent = tmp_path / 'model-2.pt'
        torch.save(ckpt, parent)
    results = tmp_path / 'child'
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=[
        '--init_from', str(parent)]), capsys)
    assert_one_line_error(code, err, 'NaN or infinite', parent.name)
    assert not results.exists()


def test_images_seen_counts_every_process():
    config = {'training': dict(train_batch_size=16, gradient_accumulate_every=2, num_processes=2)}
    assert images_seen({'step': 10}, config) == 640
    assert images_seen({'step': 10, 'images_seen': 123}, config) == 123  # the Trainer's own count wins
    single = {'training': dict(train_batch_size=16, gradient_accumulate_every=2)}
    assert images_seen({'step': 10}, single) == 320


def test_build_unet_picks_the_layout():
    assert type(build_unet(dict(dim=8, dim_mults=[1, 2], channels=1))) is Unet
    assert type(build_unet(dict(dim=8, dim_mults=[1, 2], channels=1, attention='lowest'))) is LowestAttentionUnet


def test_curve_keeps_the_rows_of_earlier_segments():
    from ddpm_mnist.evaluation.curve import with_earlier_segments
    earlier = [dict(segment=1, milestone=m, total_images_seen=m * 10) for m in (1, 2)]
    stale = [dict(segment=2, milestone=1, total_images_seen=25)]
    now = [dict(segment=2, milestone=1, total_images_seen=30), dict(segment=2, milestone=2, total_images_seen=40)]
    assert with_earlier_segments(now, earlier + stale) == earlier + now


def test_train_shipped_needs_its_minutes(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    for args, message in (([], '--minutes M'), (['--minutes', 'soon'], '--minutes M'), (['--what'], 'unknown'),
                          (['--minutes'], 'needs a value'), (['--minutes', '0'], 'a number > 0')):
        run = subprocess.run(['bash', str(ROOT / 'scripts' / 'train_shipped.sh'), *args], capture_output=True,
                             text=True, env={'PATH': '/usr/bin:/bin', 'PY': sys.executable})
        assert run.returncode == 2 and message in run.stderr and run.stderr.startswith('error:'), run.stderr


@pytest.mark.parametrize('script, env, args, message', [
    ('make_figures.sh', {'SWEEP': 'all'}, [], 'SWEEP=all; use full, cpu, headline, quick or none'),
    ('make_figures.sh', {'EDITS': 'maybe'}, [], 'EDITS=maybe; use yes or no'),
    ('make_figures.sh', {'GUIDANCE_W': 'high'}, [], 'GUIDANCE_W=high'),
    ('make_figures.sh', {'RUN': '/nonexistent'}, [], 'no sample-N.png in RUN=/nonexistent'),
    ('make_figures.sh', {}, ['now'], 'takes no arguments'),
    ('recipe_study.sh', {}, ['lean', 'huge'], 'unknown candidate huge'),
    ('recipe_study.sh', {'MINUTES': '0'}, ['lean'], 'MINUTES=0'),
    ('recipe_study.sh', {'MINUTES': 'soon'}, ['lean'], 'MINUTES=soon'),
])
def test_report_scripts_check_every_setting_before_anything(tmp_path, script, env, args, message):
    """A bad setting of a report script is one line on stderr and exit 2 before anything runs (no training, no
    figure, no data folder written)."""
    import subprocess
    from conftest import ROOT
    run = subprocess.run(['bash', str(ROOT / 'scripts' / script), *args], capture_output=True, text=True,
                         env={'PATH': '/usr/bin:/bin', 'OUT': str(tmp_path / 'out'), 'DATA': str(tmp_path / 'data'),
                              **env})
    assert run.returncode == 2 and run.stderr.startswith('error:') and message in run.stderr, run.stderr
    assert run.stderr.count('\n') == 1 and not (tmp_path / 'out').exists() and not (tmp_path / 'data').exists()


def test_setup_env_checks_its_argument_before_anything(tmp_path):
    """scripts/setup_env.sh --cpu installs the CPU build; anything else is one line on stderr, exit 2, before a
    virtual environment is made."""
    import shutil
    import subprocess
    from conftest import ROOT
    copy = tmp_path / 'repo'
    (copy / 'scripts').mkdir(parents=True)
    shutil.copy(ROOT / 'scripts' / 'setup_env.sh', copy / 'scripts')
    run = subprocess.run(['bash', str(copy / 'scripts' / 'setup_env.sh'), '--gpu'], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith('error: unknown argument --gpu') and '--cpu' in run.stderr
    assert not (copy / '.venv').exists()


def gates(fid, floor, size, features=None):
    """A model's gate scores at both etas (the same numbers), as compare_with_current returns them."""
    from ddpm_mnist.cli import export
    fit = (np.zeros(4), np.eye(4))
    return {f'DDIM 50, eta {eta}': export.GateScore(fid, floor, size, features, fit) for eta in export.GATE_ETAS}


def test_export_refusal_is_one_line_and_changes_nothing(trained_run, tmp_path, monkeypatch, capsys):
    from ddpm_mnist.cli import export
    stem = tmp_path / 'shipped'
    export_ema(trained_run / 'model-2.pt', stem)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(export, 'compare_with_current', lambda *a, **k: (gates(30.0, 10.0, 28), gates(20.0, 10.0, 32)))
    code, _, err = run_main(export.main, [str(trained_run / 'model-1.pt'), str(stem)], capsys)
    assert_one_line_error(code, err, 'scores worse', 'mean FID over DDIM 50, eta 0.0 and DDIM 50, eta 1.0 is 3.00x its '
                          'floor against 2.00x', '--force')
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_export_gate_compares_distance_to_the_floor_not_raw_fid(trained_run, tmp_path, monkeypatch, capsys):
    """A 28 px candidate with a higher FID but a higher floor too (1.5x) replaces a 32 px model at 2x."""
    from ddpm_mnist.cli import export
    stem = tmp_path / 'shipped'
    export_ema(trained_run / 'model-2.pt', stem)
    monkeypatch.setattr(export, 'compare_with_current', lambda *a, **k: (gates(12.0, 8.0, 28), gates(10.0, 5.0, 32)))
    code, out, err = run_main(export.main, [str(trained_run / 'model-1.pt'), str(stem)], capsys)
    assert code == 0 and 'wrote' in out and 'candidate 1.50x, current 2.00x' in out, err


def test_export_gate_refuses_a_candidate_clearly_worse_at_one_eta():
    """A better mean does not buy a clearly worse deterministic sampler: the paired difference decides per eta."""
    from ddpm_mnist.cli import export
    rng = np.random.default_rng(0)
    real_like = rng.normal(size=(400, 4))
    old, new = gates(10.0, 5.0, 28, real_like), gates(8.0, 5.0, 28, real_like + 0.01 * rng.normal(size=(400, 4)))
    assert export.refusal(new, old) is None  # same samples, slightly moved: not clearly worse
    eta0 = 'DDIM 50, eta 0.0'
    new[eta0] = new[eta0]._replace(features=real_like + 1.5)  # eta 0 far from the reference, eta 1 as good as before
    reason = export.refusal(new, old)
    assert reason is not None and 'clearly worse with DDIM 50, eta 0.0' in reason


def test_export_gate_scores_both_models_against_their_floor(trained_run, idx_dir, tmp_path):
    """The gate's own scoring (no stand-in): both models sampled the same way at both etas, each FID beside its
    floor."""
    from ddpm_mnist.cli import export
    current = export_ema(trained_run / 'model-1.pt', tmp_path / 'shipped')
    lines = []
    new, old = export.compare_with_current(trained_run / 'model-2.pt', current, raw_dir=idx_dir,
                                           data_root=tmp_path, num_samples=12, log=lines.append)
    for model in (new, old):
        assert set(model) == {'DDIM 20, eta 0.0', 'DDIM 20, eta 1.0'}  # DDIM-50 capped at the tiny model's T = 20
        for gate in model.values():
            assert gate.image_size == 32 and gate.fid > 0 and gate.floor > 0 and math.isfinite(export.ratio(gate))
            assert gate.features.shape[0] == 12
    assert len(lines) == 4 and all('x the floor' in line and 'N = 12' in line for line in lines)
    assert sum('DDIM 20, eta 0.0,' in line for line in lines) == 2


def sweep_row(config, strategy, nfe, fid, shares=(0.1,) * 10, copies=0.0):
    return dict(config=config, strategy=strategy, nfe=nfe, fid=fid, fid_low=fid - 1, fid_high=fid + 1,
                class_shares=list(shares), near_copy_share=copies, seconds=60.0)


def test_target_table_marks_each_target_from_the_sweep(tmp_path, capsys):
    """Met and missed targets read off a comparison.json; a sweep without the needed rows is one line."""
    from conftest import load_script
    script = load_script('target_table')
    result = dict(num_samples=1000, seed=0, precision='bf16', machine='cpu', checkpoint='m', checkpoint_sha256_16='x',
                  calibration={script.FLOOR: dict(fid=10.0)},
                  rows=[sweep_row('DDPM 1000', 'ddpm', 1000, 12.0),           # 1.2x the floor: met
                        sweep_row('DDIM 50, eta 0.0', 'ddim', 50, 16.0),       # worse than eta 1: missed
                        sweep_row('DDIM 50, eta 1.0', 'ddim', 50, 15.0, copies=0.004),
                        sweep_row('DDIM 10, eta 0.0', 'ddim', 10, 30.0),
                        sweep_row('UniPC 10', 'unipc', 10, 17.0, shares=(0.07,) + (0.93 / 9,) * 9)],
                  pairs=[dict(a='DDIM 50, eta 0.0', b='DDIM 50, eta 1.0', value=1.0, low=-0.5, high=2.5,
                              differs=False)])
    met = [ok for _, _, ok in script.target_rows(result)]
    assert met == [True, False, True, False, True]  # UniPC 10 is the best fast row: 17 <= 18
    path = tmp_path / 'comparison.json'
    path.write_text(json.dumps(result))
    code, out, err = run_main(script.main, [str(path), '--output', str(tmp_path / 'targets.md')], capsys)
    assert code == 0, err
    table = (tmp_path / 'targets.md').read_text()
    assert 'UniPC 10 17.00 [16.00, 18.00] = 1.42x DDPM 1000' in table and 'not significant' in table
    assert 'class shares 7.0% to 10.3%' in table and table.count('**no**') == 2
    # DDPM drawn on 100 of the sweep's x_T (--compare_ddpm_samples) is read against the floor at N = 100
    result['rows'][0]['n'] = 100
    result['calibration'][f'{script.FLOOR}, N = 100'] = dict(fid=8.0)
    assert 'x the floor 8.00' in script.target_rows(result)[0][1] and not script.target_rows(result)[0][2]
    # ... and the fast row is read on the x_T DDPM drew, not at its own larger N: 12 + 7 = 19 > 18, missed
    for row in result['rows']:
        row.setdefault('n', 1000)
        row.update(fid_minus_ddpm=row['fid'] - 12.0 + 2.0, fid_minus_ddpm_low=0.0, fid_minus_ddpm_high=9.0)
    fast = script.target_rows(result)[2]
    assert 'UniPC 10 19.00 on the 100 x_T DDPM 1000 drew' in fast[1] and '1.58x DDPM 1000' in fast[1] and not fast[2]
    result['rows'] = result['rows'][:1]
    path.write_text(json.dumps(result))
    code, _, err = run_main(script.main, [str(path)], capsys)
    assert_one_line_error(code, err, 'DDIM 50, eta 0.0', '--help')


def test_target_table_holds_a_student_to_its_teachers_rows():
    """With a student's rows, three more targets: 2 steps <= DDIM-50 eta 0, 1 step <= 1.5x it, 4 steps <= eta 1."""
    from conftest import load_script
    script = load_script('target_table')
    result = dict(num_samples=1000, seed=0, precision='bf16', machine='cpu', checkpoint='m', checkpoint_sha256_16='x',
                  calibration={script.FLOOR: dict(fid=10.0)},
                  rows=[sweep_row('DDPM 1000', 'ddpm', 1000, 12.0), sweep_row('DDIM 50, eta 0.0', 'ddim', 50, 16.0),
                        sweep_row('DDIM 50, eta 1.0', 'ddim', 50, 15.0),
                        sweep_row('Consistency 1', 'consistency', 1, 25.0),   # 1.56x eta 0: missed
                        sweep_row('Consistency 2', 'consistency', 2, 15.5),   # below eta 0: met
                        sweep_row('Consistency 4', 'consistency', 4, 15.0),   # equal to eta 1: met
                        sweep_row('UniPC 10', 'unipc', 10, 17.0)],
                  pairs=[dict(a='Consistency 2', b='DDIM 50, eta 0.0', value=-0.5, low=-1.5, high=0.4, differs=False)])
    assert script.target_rows(result)[2][1].startswith('UniPC 10')  # the model's best fast sampler, not its student
    student = script.target_rows(result)[5:]
    assert [ok for _, _, ok in student] == [True, False, True]
    assert student[0][0] == "student at 2 NFE: FID <= the teacher's DDIM-50 eta 0"
    assert 'paired difference -0.50 [-1.50, +0.40], not significant' in student[0][1]
    assert student[1][1].startswith('25.00 [24.00, 26.00] against 1.5x 16.00') and '1.56x' in student[1][1]
    del result['rows'][3]  # a sweep without the 1-step row has no such target
    assert len(script.target_rows(result)) == 7


def test_headline_table_selects_the_readme_rows_and_reads_each_against_its_own_floor():
    """DDPM, the best row, DDIM at eta 0 and 1 and the best other sampler at 50, 20, 10 NFE; a row of fewer samples
    (DDPM) is divided by the floor at its own N."""
    from conftest import load_script
    script = load_script('target_table')

    def row(config, strategy, nfe, fid, eta=None, n=1000, best=False):
        return dict(sweep_row(config, strategy, nfe, fid), eta=eta, n=n, seconds_per_image=nfe / 1000,
                    inception_score=9.0, is_best=best)
    rows = [row('DDPM 1000', 'ddpm', 1000, 12.0, n=100),
            row('DDIM 50, eta 0.0', 'ddim', 50, 16.0, eta=0.0), row('DDIM 50, eta 0.5', 'ddim', 50, 14.0, eta=0.5),
            row('DDIM 50, eta 1.0', 'ddim', 50, 15.0, eta=1.0), row('UniPC(2) 50', 'unipc', 50, 9.0, best=True),
            row('DPM-Solver++(2M) 50', 'dpmpp_2m', 50, 11.0), row('UniPC(2) 10', 'unipc', 10, 20.0),
            row('Euler ancestral 10', 'euler_a', 10, 30.0), row('DDIM 10, eta 0.0', 'ddim', 10, 25.0, eta=0.0)]
    result = dict(num_samples=1000, rows=rows, calibration={script.FLOOR: dict(fid=2.0, inception_score=9.8),
                                                            f'{script.FLOOR}, N = 100': dict(fid=8.0)})
    picked = [r['config'] for r in script.headline_rows(result)]
    assert picked == ['DDPM 1000', 'UniPC(2) 50', 'DDIM 50, eta 1.0', 'DDIM 50, eta 0.0', 'UniPC(2) 10',
                      'DDIM 10, eta 0.0']
    table = script.headline_table(result)
    assert '| DDPM | 1000 | 100 | 1.0000 | 12.00 [11.00, 13.00] | 1.50x |' in table  # 12 / 8, its own floor
    assert '| UniPC(2) (best) | 50 | 1,000 |' in table and '| DDIM, eta 1 | 50 | 1,000 | 0.0500 | 15.00' in table
    assert '7.50x' in table and table.rstrip().endswith('| 1x | 9.80 |')


def test_curve_scores_every_kth_milestone_and_the_last():
    from ddpm_mnist.evaluation.curve import chosen_milestones
    from ddpm_mnist.utils import UserError
    found = list(range(1, 24))
    assert chosen_milestones(found, 'every:4') == [1, 5, 9, 13, 17, 21, 23]
    assert chosen_milestones(found, 'every:1') == found and chosen_milestones([3], 'every:4') == [3]
    for bad in ('every:0', 'every:x', 'every:'):
        with pytest.raises(UserError, match='every:K'):
            chosen_milestones(found, bad)


def test_segments_table_lists_every_segment_with_totals(capsys, tmp_path):
    from conftest import load_script
    script = load_script('segments_table')
    segment = dict(machines=['cpu A'], wall_seconds=600.0, steps=100, images_seen=3200,
                   command='python3 train_ddpm_mnist.py a')
    record = dict(provenance=dict(segments=[segment, dict(segment, machines=['cpu B'], images_seen=6400, command='b')]))
    table = script.segments_table(record)
    assert '| 1 | cpu A | 10 | 5 | 100 | 3,200 | 0.1 |' in table and '| 2 | cpu B | 10 | 11 |' in table  # images/s
    assert 'In all: 9,600 images' in table and '20 minutes' in table
    legacy = dict(provenance=dict(segment))  # exported before segments were recorded: one run
    assert '| 1 | cpu A |' in script.segments_table(legacy)
    path = tmp_path / 'm.json'
    path.write_text('{}')
    code, _, err = run_main(script.main, [str(path)], capsys)
    assert_one_line_error(code, err, 'no provenance')


def test_exporting_an_export_keeps_its_provenance(tmp_path, trained_run):
    """An export of an export carries the same segments and totals (its file has no steps of its own to count)."""
    first = export_ema(trained_run / 'model-2.pt', tmp_path / 'first')
    second = export_ema(first, tmp_path / 'second')
    a, b = (json.loads(path.with_suffix('.json').read_text()) for path in (first, second))
    assert a['provenance']['total_images_seen'] > 0
    assert b['provenance'] == a['provenance'] and b['exported_from'] == a['exported_from']
    assert b['provenance']['segments'] == a['provenance']['segments']


def test_fp16_export_halves_the_file_and_samples_like_fp32(tmp_path, trained_run):
    """--weights_dtype fp16 stores half the bytes, records it, and loads back into fp32 modules whose samples
    match the fp32 export's to fp16 rounding; it can be continued with --init_from like any export."""
    from safetensors.torch import load_file
    from ddpm_mnist.cli.export import export_model
    from ddpm_mnist.model.checkpoints import read_parent
    full = export_model(trained_run / 'model-2.pt', tmp_path / 'fp32', compare=False)
    half = export_model(trained_run / 'model-2.pt', tmp_path / 'fp16', compare=False, weights_dtype='fp16')
    assert half.stat().st_size < 0.55 * full.stat().st_size
    assert {v.dtype for v in load_file(half).values() if v.is_floating_point()} == {torch.float16}
    assert json.loads(half.with_suffix('.json').read_text())['weights_dtype'] == 'float16'
    assert 'weights_dtype' not in json.loads(full.with_suffix('.json').read_text())
    a, b = (load_model(path).diffusion for path in (full, half))
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    x = torch.randn(2, 1, *a.image_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out_a, out_b = a.model(x, t), b.model(x, t)
    assert not torch.equal(out_a, out_b) and torch.allclose(out_a, out_b, atol=1e-2)
    parent = read_parent(half, load_model(full).config)
    assert all(v.dtype == torch.float16 for v in parent.ema.values() if v.is_floating_point())


def test_fp16_export_refuses_weights_beyond_its_range(tmp_path, trained_run, capsys):
    from ddpm_mnist.cli import export
    from ddpm_mnist.utils import BadValue
    ckpt = load_checkpoint(trained_run / 'model-2.pt')
    key = next(k for k in ckpt['ema'] if k.startswith('ema_model.model.') and k.endswith('.weight'))  # a Unet weight
    ckpt['ema'][key] = ckpt['ema'][key] * 0 + 1e5
    torch.save(ckpt, tmp_path / 'model-9.pt')
    with pytest.raises(BadValue, match='beyond the largest fp16 value'):
        export.export_model(tmp_path / 'model-9.pt', tmp_path / 'out', compare=False, weights_dtype='fp16')
    assert not list(tmp_path.glob('out*'))


def test_init_from_weights_of_another_shape_than_their_record_is_one_line(tmp_path, trained_run, image_folder, capsys):
    """An export whose JSON says this run's model but whose tensors are another one's: refused in one line."""
    from safetensors.torch import save_file
    parent = export_ema(trained_run / 'model-2.pt', tmp_path / 'exported')
    other = build_unet(dict(dim=16, dim_mults=[1, 2], channels=1))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(parent))
    record = json.loads(parent.with_suffix('.json').read_text())
    del record['weights_sha256_16']  # an export from before records named their weights' digest
    parent.with_suffix('.json').write_text(json.dumps(record))
    results = tmp_path / 'child'
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, extra=[
        '--init_from', str(parent)]), capsys)
    assert code == 2 and err.count('error:') == 1 and 'Traceback' not in err, err
    assert 'exported' in err and not results.exists()


def test_weights_and_their_record_from_two_exports_are_refused(tmp_path, trained_run, capsys):
    """A kill between renaming the two files of an export leaves new weights beside the old record (or the
    reverse): the record names its weights' digest, so loading the pair says so in one line."""
    import shutil
    first = export_ema(trained_run / 'model-1.pt', tmp_path / 'a')
    second = export_ema(trained_run / 'model-2.pt', tmp_path / 'b')
    assert json.loads(first.with_suffix('.json').read_text())['weights_sha256_16'] == file_digest(first)
    shutil.copy(second, first)
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(first), '--strategy', 'ddim',
                                                        '--sample_steps', '2', '--num_samples', '4',
                                                        '--results_folder', str(tmp_path / 'out')], capsys)
    assert_one_line_error(code, err, 'a.json describes other weights than a.safetensors', 'export the model again')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('output', ['.', 'folder', 'afile/model'])
def test_export_to_a_folder_or_under_a_file_is_one_line(trained_run, tmp_path, monkeypatch, capsys, output):
    from ddpm_mnist.cli import export
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'afile').write_text('not a folder')
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_main(export.main, [str(trained_run / 'model-2.pt'), output, '--no-compare'], capsys)
    assert_one_line_error(code, err, 'output')
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_sweeps_of_the_same_x_t_merge_into_one_and_others_are_refused(tmp_path, capsys):
    """Two parts of one sweep merge into one comparison: rows of both, the best row re-chosen (a part's difference
    from its own best is dropped), pairs kept; parts that disagree on a shared row, or on the sweep's settings, are
    one-line errors that write nothing."""
    from conftest import load_script
    script = load_script('merge_sweeps')

    def row(config, strategy, steps, fid, eta=None, best=False, seconds=0.01):
        return dict(sweep_row(config, strategy, steps, fid), steps=steps, eta=eta, n=100, seconds_per_image=seconds,
                    is_best=best, fid_minus_best=0.0 if best else 1.0, fid_minus_best_low=0.0,
                    fid_minus_best_high=2.0, differs_from_best=False)
    settings = dict(checkpoint='m', checkpoint_sha256_16='x', seed=0, num_samples=100, precision='bf16',
                    batch_size=100, reference_images=10000, train_images=60000, machine='cpu', device='cpu',
                    calibration={script_floor(): dict(fid=2.0, fid_low=1.0, fid_high=3.0)})
    full = dict(settings, rows=[row('DDIM 50, eta 0.0', 'ddim', 50, 8.0, eta=0.0),
                                row('UniPC(2) 50', 'unipc', 50, 4.0, best=True)])
    part = dict(settings, student='s.safetensors', student_sha256_16='y',
                rows=[row('DDIM 50, eta 0.0', 'ddim', 50, 8.0, eta=0.0, best=True, seconds=0.012),
                      row('Consistency 2', 'consistency', 2, 15.0)],
                pairs=[dict(a='Consistency 2', b='DDIM 50, eta 0.0', value=7.0, low=6.0, high=8.0, differs=True)])
    paths = [tmp_path / 'full.json', tmp_path / 'part.json']
    for path, result in zip(paths, (full, part)):
        path.write_text(json.dumps(result))
    out = tmp_path / 'merged'
    code, _, err = run_main(script.main, [*map(str, paths), '--output_dir', str(out)], capsys)
    assert code == 0, err
    merged = json.loads((out / 'comparison.json').read_text())
    assert [r['config'] for r in merged['rows']] == ['DDIM 50, eta 0.0', 'UniPC(2) 50', 'Consistency 2']
    assert [r['is_best'] for r in merged['rows']] == [False, True, False]
    student = merged['rows'][2]
    assert 'fid_minus_best' not in student  # its part's best was DDIM 50, not the merged best
    assert merged['student_sha256_16'] == 'y' and merged['pairs'][0]['a'] == 'Consistency 2'
    table = (out / 'comparison.md').read_text()
    assert 'Merged from 2 sweeps' in table and '1.2-1.2x' in table and (out / 'comparison.png').is_file()
    # a shared row scored differently: not the same samples
    part['rows'][0]['fid'] = 8.5
    paths[1].write_text(json.dumps(part))
    refused = tmp_path / 'refused'
    code, _, err = run_main(script.main, [*map(str, paths), '--output_dir', str(refused)], capsys)
    assert_one_line_error(code, err, 'DDIM 50, eta 0.0', 'same samples')
    assert not refused.exists()
    # another seed: not parts of one sweep
    part['rows'][0]['fid'], part['seed'] = 8.0, 1
    paths[1].write_text(json.dumps(part))
    code, _, err = run_main(script.main, [*map(str, paths), '--output_dir', str(refused)], capsys)
    assert_one_line_error(code, err, 'seed')
    paths[1].write_text('{"not": "a sweep"}')
    code, _, err = run_main(script.main, [*map(str, paths), '--output_dir', str(refused)], capsys)
    assert_one_line_error(code, err, 'comparison.json')
    assert not refused.exists()


def script_floor():
    from ddpm_mnist.evaluation.sweep_tables import FLOOR
    return FLOOR
