import json
import pickle

import pytest
from PIL import Image
import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Trainer, Unet

import inference_comparison
from conftest import assert_one_line_error, run_main, sample_with
from ddpm_mnist.sampling import loop as sampling
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.cli.inference import resolve_checkpoint
from ddpm_mnist.settings import SHIPPED
from ddpm_mnist.model.config import detect_objective, detect_schedule
from ddpm_mnist.model.checkpoints import load_model


def tiny_diffusion(timesteps=20, objective='pred_v', schedule='cosine', seed=0):
    torch.manual_seed(seed)
    unet = Unet(dim=8, dim_mults=(1, 2), channels=1)
    return GaussianDiffusion(unet, image_size=16, timesteps=timesteps, objective=objective,
                             beta_schedule=schedule).eval()


def infer(trained_run, capsys, *extra):
    argv = ['--milestone', '2', '--results_folder', str(trained_run), '--num_samples', '5', '--batch_size', '2',
            '--device', 'cpu', *extra]
    return run_main(inference_comparison.main, argv, capsys)


def test_inference_from_training_checkpoint(trained_run, capsys):
    code, out, _ = infer(trained_run, capsys, '--strategy', 'ddim', '--sample_steps', '4', '--ddim_eta', '0.5')
    assert code == 0 and 'NFE 4 per image' in out and 's/image' in out
    grid = trained_run / 'inference_milestone_2' / 'ddim' / 'ddim_steps4_eta0.5.png'
    record = json.loads(grid.with_suffix('.json').read_text())
    assert grid.is_file() and record['num_samples'] == 5 and record['weights'] == 'ema'
    assert record['nfe_per_image'] == 4 and record['seconds'] > 0 and record['step'] == 4
    with Image.open(grid) as image:
        assert json.loads(image.text['ddpm_mnist']) == record  # the grid carries its own record (issue 15: no grid without one)
        assert image.size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)  # 5 digits of 32 px shown at 64 px, 3 a row, 2 px apart


def test_progress_is_plain_lines_in_a_log_and_quiet_silences_it(trained_run, capsys):
    """Sampling shows what it runs; without a terminal (a log, here pytest's capture) as plain lines, never carriage
    returns; --quiet leaves only the results and warnings."""
    code, _, err = infer(trained_run, capsys, '--strategy', 'ddim', '--sample_steps', '3')
    assert code == 0 and 'ddim 3 steps, 5 images' in err and '\r' not in err
    code, out, err = infer(trained_run, capsys, '--strategy', 'ddim', '--sample_steps', '3', '--quiet')
    assert code == 0 and 'NFE 3 per image' in out and 'steps' not in err, err


def test_ddpm_runs_all_steps_and_warns(trained_run, capsys):
    code, out, err = infer(trained_run, capsys, '--strategy', 'ddpm', '--sample_steps', '5')
    assert code == 0 and 'NFE 20 per image' in out and 'DDPM always runs all T=20 steps' in err
    assert (trained_run / 'inference_milestone_2' / 'ddpm' / 'ddpm_steps20.png').is_file()


def test_num_samples_is_the_number_of_images():  # bug 5
    images = sample_with(tiny_diffusion(), strategy='ddim', num_samples=7, batch_size=3, steps=2)
    assert images.shape == (7, 1, 16, 16) and 0 <= images.min() and images.max() <= 1


def test_ddim_with_eta_1_and_all_steps_equals_ddpm():
    diffusion = tiny_diffusion()
    ddpm = sample_with(diffusion, strategy='ddpm', num_samples=4, batch_size=4, seed=3)
    ddim = sample_with(diffusion, strategy='ddim', num_samples=4, batch_size=4, steps=20, eta=1.0, seed=3)
    assert torch.allclose(ddpm, ddim, atol=1e-4)


def test_ddim_with_all_steps_really_runs_ddim():  # bug 4
    diffusion = tiny_diffusion()
    ddpm = sample_with(diffusion, strategy='ddpm', num_samples=4, seed=3)
    ddim = sample_with(diffusion, strategy='ddim', num_samples=4, steps=20, eta=0.0, seed=3)
    assert not torch.allclose(ddpm, ddim, atol=1e-3)


def test_ddim_eta0_is_deterministic_and_batching_does_not_matter():
    diffusion = tiny_diffusion()
    a = sample_with(diffusion, strategy='ddim', num_samples=6, batch_size=6, steps=5, seed=1)
    b = sample_with(diffusion, strategy='ddim', num_samples=6, batch_size=4, steps=5, seed=1)
    c = sample_with(diffusion, strategy='ddim', num_samples=6, batch_size=6, steps=5, seed=2)
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)


def test_same_seed_same_initial_noise_for_both_strategies(monkeypatch):  # bug 6
    seen = []
    real = sampling.run_batch
    monkeypatch.setattr(sampling, 'run_batch', lambda d, sampler, x_T, *a: seen.append(x_T.clone())
                        or real(d, sampler, x_T, *a))
    diffusion = tiny_diffusion()
    sample_with(diffusion, strategy='ddpm', num_samples=5, batch_size=2, seed=9)
    for strategy in ('ddim', 'dpmpp_2m', 'euler_a'):
        sample_with(diffusion, strategy=strategy, num_samples=5, batch_size=5, steps=3, seed=9)
    assert torch.equal(torch.cat(seen[:3]), seen[3]) and all(torch.equal(seen[3], x) for x in seen[4:])


def test_identical_output_on_rerun(trained_run, capsys):
    grids = []
    for _ in range(2):
        assert infer(trained_run, capsys, '--strategy', 'ddpm', '--seed', '4')[0] == 0
        with Image.open(trained_run / 'inference_milestone_2' / 'ddpm' / 'ddpm_steps20.png') as grid:
            grids.append(grid.tobytes())  # the pixels; the record inside the PNG holds the run's timing
    assert grids[0] == grids[1]


def test_timing_excludes_warm_up_and_synchronises(monkeypatch):  # bug 7
    calls = []
    monkeypatch.setattr(sampling, 'warm_up', lambda *a: calls.append('warm'))
    monkeypatch.setattr(sampling, 'synchronize', lambda device: calls.append('sync'))
    real = sampling.sample
    monkeypatch.setattr(sampling, 'sample', lambda *a, **k: calls.append('sample') or real(*a, **k))
    sampling.timed_sample(tiny_diffusion(), SamplerSettings('ddim', 2, 0.0), num_samples=2)
    assert calls == ['warm', 'sample', 'sync']


@pytest.mark.parametrize('objective', ['pred_v', 'pred_noise', 'pred_x0'])
@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'sigmoid'])
def test_detect_objective_and_schedule(objective, schedule):
    d = tiny_diffusion(timesteps=50, objective=objective, schedule=schedule)
    assert detect_objective(d.loss_weight, d.alphas_cumprod) == objective
    assert detect_schedule(d.betas) == schedule


@pytest.fixture(scope='module')
def legacy_checkpoint(tmp_path_factory, image_folder):
    """A checkpoint made by plain lucidrains Trainer.save, no config, online weights != EMA weights."""
    folder = tmp_path_factory.mktemp('legacy')
    diffusion = GaussianDiffusion(Unet(dim=8, dim_mults=(1, 2), channels=1), image_size=32, timesteps=30,
                                  beta_schedule='linear')  # objective left at the library default, pred_v
    trainer = Trainer(diffusion, str(image_folder), train_batch_size=16, results_folder=str(folder),
                      calculate_fid=False, num_samples=4, amp=False)
    with torch.no_grad():
        for p in trainer.ema.ema_model.parameters():
            p.add_(0.05)
    trainer.save(3)
    return folder / 'model-3.pt', trainer


def test_legacy_checkpoint_loads_ema_and_detects_settings(legacy_checkpoint, capsys):  # bug 2
    path, trainer = legacy_checkpoint
    diffusion, config, info = load_model(path)
    assert info['detected'] == {'timesteps': 30, 'beta_schedule': 'linear', 'objective': 'pred_v'}
    assert diffusion.objective == 'pred_v' and config['model']['dim'] == 8
    ema = trainer.ema.ema_model.model.state_dict()
    online = trainer.model.model.state_dict()
    loaded = diffusion.model.state_dict()
    assert torch.equal(loaded['init_conv.weight'], ema['init_conv.weight'])
    assert not torch.equal(loaded['init_conv.weight'], online['init_conv.weight'])
    online_model = load_model(path, use_ema=False)[0]
    assert torch.equal(online_model.model.state_dict()['init_conv.weight'], online['init_conv.weight'])
    assert 'ONLINE' in capsys.readouterr().err
    code, out, _ = run_main(inference_comparison.main, ['--checkpoint', str(path), '--strategy', 'ddim',
                                                        '--sample_steps', '3', '--num_samples', '2',
                                                        '--results_folder', str(path.parent)], capsys)
    assert code == 0 and 'detected from the checkpoint: objective = pred_v' in out and 'EMA weights' in out


def test_flag_contradicting_checkpoint_is_an_error(legacy_checkpoint, trained_run, capsys):
    path, _ = legacy_checkpoint
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(path), '--objective', 'pred_noise'],
                            capsys)
    assert_one_line_error(code, err, '--objective pred_noise contradicts')  # bug 1
    code, _, err = infer(trained_run, capsys, '--unet_dim', '64')
    assert_one_line_error(code, err, '--unet_dim 64 contradicts')


def test_checkpoint_of_another_architecture(trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run / 'model-2.pt', weights_only=True)
    ckpt['config']['model']['dim'] = 16
    torch.save(ckpt, tmp_path / 'model-5.pt')
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(tmp_path / 'model-5.pt')], capsys)
    assert_one_line_error(code, err, 'another architecture', 'dim: 16 vs 8')


def test_malicious_checkpoint_is_refused(tmp_path, capsys):  # bug 11
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    path = tmp_path / 'model-1.pt'
    torch.save({'model': {}, 'ema': Evil()}, path)
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(path)], capsys)
    assert_one_line_error(code, err, 'refusing to unpickle')
    assert not marker.exists()


@pytest.mark.parametrize('content, message', [
    (b'', 'empty'), (b'not a checkpoint at all', 'cannot be read'), ('truncate', 'truncated'),
    (pickle.dumps({'a': 1}), 'cannot be read'),
])
def test_damaged_checkpoints(trained_run, tmp_path, content, message, capsys):
    path = tmp_path / 'model-1.pt'
    data = (trained_run / 'model-2.pt').read_bytes()
    path.write_bytes(data[:len(data) // 2] if content == 'truncate' else content)
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(path)], capsys)
    assert_one_line_error(code, err, message)


def test_not_a_training_checkpoint(tmp_path, capsys):
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'x.pt')
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(tmp_path / 'x.pt')], capsys)
    assert_one_line_error(code, err, 'not a training checkpoint')


@pytest.mark.parametrize('extra, message', [
    (['--milestone', '9'], 'milestone 9 not found'),
    (['--sample_steps', '0', '--strategy', 'ddim'], '--sample_steps 0 is not allowed'),
    (['--sample_steps', '21', '--strategy', 'ddim'], 'T=20'),
    (['--ddim_eta', '-0.5', '--strategy', 'ddim'], '--ddim_eta -0.5 is not allowed'),
    (['--num_samples', '0'], '--num_samples 0 is not allowed: use an integer >= 1'),
])
def test_bad_inference_input(trained_run, extra, message, capsys):
    argv = ['--results_folder', str(trained_run), '--device', 'cpu']
    argv += extra if '--milestone' in extra else ['--milestone', '2'] + extra
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, message)
    if '--milestone' in extra:
        assert 'milestones 1, 2' in err


def test_unwritable_results_folder(trained_run, tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(trained_run / 'model-2.pt'),
                                                        '--results_folder', str(blocker / 'sub')], capsys)
    assert_one_line_error(code, err, 'cannot write to folder')


def test_unavailable_device(capsys):
    if torch.cuda.is_available():
        pytest.skip('CUDA present')
    code, _, err = run_main(inference_comparison.main, ['--device', 'cuda'], capsys)
    assert_one_line_error(code, err, 'not available')


@pytest.mark.parametrize('strategy,steps,eta', [('ddim', 1, 0.0), ('ddim', 5, 0.0), ('ddim', 20, 0.0),
                                               ('ddim', 5, 1.0), ('ddpm', 20, 0.0)])
def test_bf16_sampling_is_close_to_fp32_and_finite(strategy, steps, eta):
    from ddpm_mnist.sampling.loop import Bf16Unet, prepare_for_inference
    settings = dict(strategy=strategy, num_samples=4, steps=steps, eta=eta, seed=2)
    fp32 = sample_with(tiny_diffusion(), **settings)
    bf16_diffusion = prepare_for_inference(tiny_diffusion(), 'bf16')
    assert isinstance(bf16_diffusion.model, Bf16Unet)
    bf16 = sample_with(bf16_diffusion, **settings)
    assert bf16.isfinite().all() and (bf16 - fp32).abs().mean() < 0.02


@pytest.mark.parametrize('dim_mults', [(1, 2), (1, 2, 2)])
def test_fast_attention_matches_the_library(dim_mults):
    import copy
    from ddpm_mnist.model.network import FastAttention, FastLinearAttention, use_fast_attention
    torch.manual_seed(0)
    unet = Unet(dim=16, dim_mults=dim_mults, channels=1).eval()
    for p in unet.parameters():  # away from the init, so every parameter matters
        p.data.add_(0.1 * torch.randn_like(p))
    fast = use_fast_attention(copy.deepcopy(unet))
    kinds = {type(m) for m in fast.modules()}
    assert FastAttention in kinds and FastLinearAttention in kinds
    assert fast.state_dict().keys() == unet.state_dict().keys()
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([0, 400, 999])
    with torch.inference_mode():
        expected = unet(x, t)
        for layout in (torch.contiguous_format, torch.channels_last):
            out = fast.to(memory_format=layout)(x.contiguous(memory_format=layout), t)
            assert (out - expected).abs().max() < 1e-4 * expected.abs().max()


def test_shipped_model_makes_recognisable_digits():
    from ddpm_mnist.evaluation.classifier import classify, load_classifier
    from ddpm_mnist.sampling.loop import prepare_for_inference
    diffusion, config, info = load_model(SHIPPED)
    assert info['weights'] == 'ema' and config['model']['dim'] == 32
    images = sample_with(prepare_for_inference(diffusion, 'bf16'), strategy='ddim', num_samples=20,
                             batch_size=20, steps=10, seed=0)
    _, probs = classify(load_classifier(), images)
    noise_probs = classify(load_classifier(), torch.rand(20, 1, 32, 32))[1]
    # digits: confident, many classes, dark background; noise collapses onto one or two classes
    assert probs.max(1).mean() > 0.75 and len(set(probs.argmax(1).tolist())) >= 6
    assert len(set(noise_probs.argmax(1).tolist())) <= 3
    assert 0.05 < images.mean() < 0.3 and (images < 0.1).float().mean() > 0.6


def test_same_file_name_in_two_folders_gets_two_output_folders(trained_run, tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    ckpt = torch.load(trained_run / 'model-2.pt', weights_only=True)
    torch.save(ckpt, tmp_path / 'a' / 'model-1.pt')
    ckpt['step'] += 1
    torch.save(ckpt, tmp_path / 'b' / 'model-1.pt')
    names = {resolve_checkpoint(checkpoint=str(tmp_path / sub / 'model-1.pt'))[1] for sub in 'ab'}
    assert len(names) == 2 and all(n.startswith('inference_model-1_') for n in names)


def test_shipped_model_says_what_it_came_from():
    record = json.loads(SHIPPED.with_suffix('.json').read_text())
    prov = record['provenance']
    training = record['training']
    # a segment may stop at its time limit before the steps it asked for
    assert prov['training_images'] == 60000 and 0 < prov['steps'] <= training['train_num_steps']
    assert prov['images_seen'] == prov['steps'] * training['train_batch_size'] * training['gradient_accumulate_every']
    assert prov['wall_seconds'] > 0 and prov['machines'] and prov['versions']['torch']
    assert prov['command'].startswith('python3 train_ddpm_mnist.py')
    segments = prov.get('segments') or [prov]
    assert prov.get('total_images_seen', prov['images_seen']) == sum(seg['images_seen'] for seg in segments)
    assert all(seg['command'].startswith('python3 train_ddpm_mnist.py') for seg in segments)
    assert '"/' not in json.dumps(record)  # no absolute path of the build machine


def test_a_second_run_into_a_busy_output_folder_is_refused_naming_the_first(trained_run, tmp_path, capsys):
    """A sampling run holds its output folder's lock while it writes a grid and its record; another process
    writing there at the same time is refused in one line with the holder's pid (the lock is flock: it dies with
    its process, so a killed run never leaves it stuck)."""
    import subprocess
    import sys
    checkpoint = trained_run / 'model-2.pt'
    _, run_name, _ = resolve_checkpoint(checkpoint=str(checkpoint), results_folder=str(tmp_path))
    folder = tmp_path / run_name / 'ddim'
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from ddpm_mnist.utils import FolderLock\n'
                               'with FolderLock(sys.argv[1], "sampling"):\n    print("held", flush=True); time.sleep(60)',
                               str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(checkpoint), '--strategy', 'ddim',
                                                            '--sample_steps', '3', '--num_samples', '4',
                                                            '--results_folder', str(tmp_path)], capsys)
        assert_one_line_error(code, err, 'in use by a running sampling process', f'pid {holder.pid}')
        assert not list(folder.glob('*.png'))
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(checkpoint), '--strategy', 'ddim',
                                                        '--sample_steps', '3', '--num_samples', '4',
                                                        '--results_folder', str(tmp_path)], capsys)
    assert code == 0 and list(folder.glob('*.png')), err  # the holder is gone: the lock went with it
