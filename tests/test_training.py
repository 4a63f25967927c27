import json

import pytest
import torch
from PIL import Image

import train_ddpm_mnist
from conftest import assert_one_line_error, run_main, train_argv
from ddpm_mnist.model.checkpoints import load_checkpoint
from ddpm_mnist.training.run_folder import milestones
from ddpm_mnist.runtime import cpu_has_bf16
from ddpm_mnist.training.trainer import MnistTrainer
from ddpm_mnist.training.command import build_config, mixed_precision


def test_training_writes_config_milestones_and_samples(trained_run):
    assert milestones(trained_run) == [1, 2]
    assert (trained_run / 'sample-1.png').is_file() and (trained_run / 'sample-2.png').is_file()
    config = json.loads((trained_run / 'config.json').read_text())
    assert config['model'] == {'dim': 8, 'dim_mults': [1, 2], 'channels': 1}
    assert config['diffusion'] == {'image_size': 32, 'timesteps': 20, 'beta_schedule': 'cosine',
                                   'objective': 'pred_v'}
    assert config['data']['num_images'] == 120 and config['versions']['torch'] == torch.__version__
    ckpt = load_checkpoint(trained_run / 'model-2.pt')
    assert ckpt['step'] == 4 and ckpt['config']['model'] == config['model']
    assert not list(trained_run.glob('.*tmp*'))


def test_seed_preset_is_the_original():
    args = train_ddpm_mnist.parse_args([])
    config = build_config(**train_ddpm_mnist.config_kwargs(args))
    assert config['model'] == {'dim': 64, 'dim_mults': [1, 2, 4, 8], 'channels': 1}
    assert config['diffusion'] == {'image_size': 32, 'timesteps': 1000, 'beta_schedule': 'cosine',
                                   'objective': 'pred_v'}
    t = config['training']
    assert (t['train_batch_size'], t['train_lr'], t['train_num_steps'], t['gradient_accumulate_every'],
            t['ema_decay'], t['amp'], t['save_and_sample_every'], t['results_folder']) == \
        (128, 1e-5, 100000, 2, 0.995, True, 1000, './results_mnist_ddpm')
    assert not t['calculate_fid']


def test_flags_override_preset():
    config = build_config(**train_ddpm_mnist.config_kwargs(train_ddpm_mnist.parse_args(
        ['--preset', 'small', '--unet_dim', '16', '--objective', 'pred_noise', '--train_lr', '3e-4', '--no-amp'])))
    assert config['model']['dim'] == 16 and config['diffusion']['objective'] == 'pred_noise'
    assert config['training']['train_lr'] == 3e-4 and config['training']['amp'] is False
    assert config['model']['dim_mults'] == [1, 2, 2]


def test_digits_are_never_flipped(image_folder):
    from ddpm_mnist.model.network import build_diffusion
    from ddpm_mnist.settings import PRESETS
    config = dict(PRESETS['small'], versions={'denoising_diffusion_pytorch': 'x'})
    trainer = MnistTrainer(build_diffusion({'model': dict(dim=8, dim_mults=[1, 2], channels=1),
                                            'diffusion': config['diffusion']}),
                           str(image_folder), config=config, num_workers=0, train_batch_size=16,
                           results_folder=str(image_folder.parent / 'flip'), calculate_fid=False, num_samples=4)
    names = [type(t).__name__ for t in trainer.ds.transform.transforms]
    assert 'RandomHorizontalFlip' not in names
    img = next(trainer.dl)
    assert img.shape == (16, 1, 32, 32)


def test_resume_auto_continues_from_latest(tmp_path, image_folder, capsys):
    results = tmp_path / 'r'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    first = (results / 'model-1.pt').read_bytes()
    (results / 'sample-1.png').unlink()  # what a kill between the checkpoint and its grid leaves
    code, out, _ = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert code == 0 and 'resumed from milestone 1 (step 2)' in out
    with Image.open(results / 'sample-1.png') as grid:  # drawn again on resume: every checkpoint has its grid
        assert json.loads(grid.text['ddpm_mnist'])['redrawn_on_resume'] is True
    assert milestones(results) == [1, 2] and load_checkpoint(results / 'model-2.pt')['step'] == 4
    assert (results / 'model-1.pt').read_bytes() == first
    code, out, _ = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert code == 0 and 'nothing to do' in out
    # never roll back: an older milestone or a fresh start is refused, nothing is touched
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4,
                                                              extra=['--resume', '1']), capsys)
    assert_one_line_error(code, err, 'older than the latest')
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4,
                                                              extra=['--resume', 'none']), capsys)
    assert_one_line_error(code, err, 'would overwrite')
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4,
                                                              extra=['--resume', '7']), capsys)
    assert_one_line_error(code, err, 'milestone 7 not found', '1, 2')
    assert (results / 'model-1.pt').read_bytes() == first


def test_architecture_mismatch_with_folder_is_an_error(trained_run, image_folder, capsys):
    argv = train_argv(image_folder, trained_run, steps=6) + ['--unet_dim', '16']
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, 'another model', 'dim: 8 vs 16')


def test_failed_save_keeps_earlier_milestones(tmp_path, image_folder, monkeypatch, capsys):
    results = tmp_path / 'r'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, 'r+b') as handle:
            handle.truncate(1000)
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', disk_full)
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    monkeypatch.setattr(torch, 'save', real_save)
    assert_one_line_error(code, err, 'could not write', 'model-2.pt', 'No space left on device', 'intact')
    assert milestones(results) == [1] and not (results / 'sample-2.png').exists()  # no grid without its checkpoint
    assert load_checkpoint(results / 'model-1.pt')['step'] == 2
    assert [p.name for p in results.iterdir() if 'tmp' in p.name] == []


@pytest.mark.parametrize('count, message', [(None, 'does not exist'), (0, 'holds no images'),
                                            (50, 'only 50 images')])
def test_bad_data_folder(tmp_path, image_folder, count, message, capsys):
    folder = tmp_path / 'd'
    if count is not None:
        folder.mkdir()
        for p in sorted(image_folder.glob('*.png'))[:count]:
            (folder / p.name).write_bytes(p.read_bytes())
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(folder, tmp_path / 'r'), capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / 'r').exists()


def test_mixed_precision_choice():
    assert mixed_precision(True, 'auto', 'cuda') == 'fp16'
    assert mixed_precision(True, 'auto', 'cpu') == ('bf16' if cpu_has_bf16() else 'no')  # emulated bf16 is slow
    assert mixed_precision(False, 'auto', 'cuda') == 'no'
    with pytest.raises(Exception, match='fp16 mixed precision needs CUDA'):
        mixed_precision(True, 'fp16', 'cpu')


def test_damaged_latest_milestone_is_a_clear_error(tmp_path, image_folder, capsys):
    results = tmp_path / 'r'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    data = (results / 'model-1.pt').read_bytes()
    (results / 'model-1.pt').write_bytes(data[:len(data) // 3])
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert_one_line_error(code, err, 'model-1.pt', 'truncated')


def original_project_folder(tmp_path, image_folder):
    """A results folder of the original project: plain lucidrains checkpoints (pred_noise, linear), no config."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Trainer, Unet
    folder = tmp_path / 'original'
    diffusion = GaussianDiffusion(Unet(dim=8, dim_mults=(1, 2), channels=1), image_size=32, timesteps=100,
                                  beta_schedule='linear', objective='pred_noise')  # T=20 would end at beta = 1
    trainer = Trainer(diffusion, str(image_folder), train_batch_size=16, results_folder=str(folder),
                      calculate_fid=False, num_samples=4, amp=False, save_and_sample_every=2)
    trainer.step = 2
    trainer.save(1)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)  # that Trainer fixed fp32; our run picks its own
    return folder


@pytest.mark.parametrize('extra, fragments', [
    ([], ['objective: pred_noise in the weights vs pred_v', 'beta_schedule: linear in the weights vs cosine']),
    (['--unet_dim', '16', '--objective', 'pred_noise', '--beta_schedule', 'linear'], ['dim: 8 vs 16']),
])
def test_resuming_an_original_folder_with_other_settings_is_refused(tmp_path, image_folder, capsys, extra,
                                                                     fragments):
    folder = original_project_folder(tmp_path, image_folder)
    before = sorted(p.name for p in folder.iterdir())
    argv = train_argv(image_folder, folder, steps=4, extra=['--train_timesteps', '100', *extra])
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, 'model-1.pt holds another model than the settings of this run', *fragments)
    assert sorted(p.name for p in folder.iterdir()) == before  # no config.json left behind


def test_resuming_an_original_folder_with_its_settings_works(tmp_path, image_folder, capsys):
    folder = original_project_folder(tmp_path, image_folder)
    extra = ['--objective', 'pred_noise', '--beta_schedule', 'linear', '--train_timesteps', '100']
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, folder, steps=4, extra=extra), capsys)
    assert code == 0, err
    assert milestones(folder) == [1, 2]


def test_config_contradicting_the_buffers_is_refused_at_inference(tmp_path, image_folder, capsys):
    import inference_comparison
    folder = original_project_folder(tmp_path, image_folder)
    ckpt = torch.load(folder / 'model-1.pt', weights_only=True)
    ckpt['config'] = {'model': dict(dim=8, dim_mults=[1, 2], channels=1),
                      'diffusion': dict(image_size=32, timesteps=100, beta_schedule='cosine', objective='pred_v')}
    torch.save(ckpt, folder / 'model-1.pt')
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(folder / 'model-1.pt')], capsys)
    assert_one_line_error(code, err, 'contradict its config', 'objective: pred_noise in the weights vs pred_v')


def test_calculate_fid_without_internet_is_one_line(tmp_path, image_folder, monkeypatch, capsys):
    import pytorch_fid.inception
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(pytorch_fid.inception, 'load_state_dict_from_url', offline)
    argv = train_argv(image_folder, tmp_path / 'r', extra=['--calculate_fid'])
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, '--calculate_fid needs the Inception weights', 'name resolution')
    assert not (tmp_path / 'r').exists()


def test_malicious_milestone_is_refused_at_resume(tmp_path, image_folder, capsys):
    results = tmp_path / 'r'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    marker = tmp_path / 'pwned'

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), 'w'))
    torch.save({'model': {}, 'ema': RunsCode(), 'step': 2}, results / 'model-1.pt')
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert_one_line_error(code, err, 'model-1.pt', 'refusing to unpickle', 'could run code')
    assert not marker.exists()
