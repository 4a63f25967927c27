"""Every numeric flag of every script refuses a bad value up front: exit 2, one line naming the flag, the value
and what is allowed, no traceback, nothing written. Add a row for every bad input found."""
import pytest

import get_mnist_data
import inference_comparison
import train_ddpm_mnist
from conftest import assert_one_line_error, run_main

TRAIN_BAD = [
    ('--train_lr', '-1'), ('--train_lr', 'nan'), ('--train_lr', 'inf'), ('--train_batch_size', '0'),
    ('--train_num_steps', '0'), ('--gradient_accumulate_every', '0'), ('--ema_decay', '5'), ('--ema_decay', '1'),
    ('--ema_update_every', '0'), ('--save_and_sample_every', '0'), ('--num_samples', '10'),
    ('--sampling_timesteps', '0'), ('--num_fid_samples', '1'), ('--num_workers', '-1'), ('--seed', '-1'),
    ('--seed', str(2 ** 32)), ('--unet_dim', '0'), ('--dim_mults', '1,0'), ('--train_timesteps', '0'),
    ('--channels', '2'), ('--image_size', '7'), ('--max_minutes', '0'), ('--max_minutes', 'nan'),
    ('--lr_warmup_steps', '-1'), ('--lr_schedule', 'linear'), ('--min_snr_gamma', '-5'), ('--snr_floor', '0'),
    ('--input_perturbation', '-0.1'), ('--cond_drop_prob', '1'), ('--stable_targets', '0'),
    ('--noise_levels', '1'), ('--noise_levels', '0,-1'), ('--self_condition', 'yes'),
]
INFERENCE_BAD = [
    ('--compare_samplers', 'ddim,heun'), ('--compare_solver_steps', '0'), ('--milestone', '0'),
    ('--sample_steps', '0'), ('--ddim_eta', '2'), ('--ddim_eta', 'nan'),
    ('--num_samples', '0'), ('--batch_size', '0'), ('--seed', '99999999999999'), ('--seed', '-3'),
    ('--compare_steps', '10,0'), ('--compare_etas', '0,1.5'), ('--unet_dim', '-4'), ('--dim_mults', '0,2'),
    ('--channels', '2'), ('--image_size', '4'), ('--train_timesteps', '0'),
]
EDIT_BAD = [
    (['sdedit', '--input', 'a.png', '--strength', '0'], '--strength'),
    (['sdedit', '--input', 'a.png', '--strength', 'nan'], '--strength'),
    (['sdedit', '--input', 'a.png', '--strength', '0.5', '--steps', '0'], '--steps'),
    (['sdedit', '--input', 'a.png', '--strength', '0.5', '--eta', '2'], '--eta'),
    (['inpaint', '--input', 'a.png', '--mask', 'top', '--resamples', '0'], '--resamples'),
    (['inpaint', '--input', 'a.png', '--mask', 'top', '--jump_length', '0'], '--jump_length'),
    (['interpolate', '--seeds', '1', '2', '--frames', '1'], '--frames'),
    (['invert', '--input', 'a.png', '--seed', '-1'], '--seed'),
    (['invert', '--input', 'a.png', '--batch_size', '0'], '--batch_size'),
]
CURVE_BAD = [('--num_samples', '5'), ('--sample_steps', '0'), ('--ddim_eta', '2'), ('--seed', '-1'),
             ('--batch_size', '0')]


@pytest.mark.parametrize('flag, value', TRAIN_BAD)
def test_bad_training_flag(tmp_path, monkeypatch, capsys, flag, value):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(train_ddpm_mnist.main, ['--preset', 'small', flag, value], capsys)
    assert_one_line_error(code, err, f'{flag} ', 'is not allowed: use')
    assert 'Traceback' not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('flag, value', INFERENCE_BAD)
@pytest.mark.parametrize('mode', [[], ['--compare']])
def test_bad_inference_flag(tmp_path, monkeypatch, capsys, flag, value, mode):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(inference_comparison.main, [*mode, flag, value], capsys)
    assert_one_line_error(code, err, f'{flag} ', 'is not allowed')
    assert 'Traceback' not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('argv, flag', EDIT_BAD)
def test_bad_edit_flag(tmp_path, monkeypatch, capsys, argv, flag):
    import edit_digits
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(edit_digits.main, argv, capsys)
    assert_one_line_error(code, err, f'{flag} ', 'is not allowed')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('flag, value', CURVE_BAD)
def test_bad_training_curve_flag(tmp_path, monkeypatch, capsys, flag, value):
    from conftest import load_script
    script = load_script('training_curve')
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(script.main, ['--results_folder', 'r', flag, value], capsys)
    assert_one_line_error(code, err, f'{flag} ', 'is not allowed: use')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('argv, message', [
    (['--preset', 'small', '--image_size', '30', '--dim_mults', '1,2,4'], 'multiple of 4'),
    (['--preset', 'small', '--sampling_timesteps', '5000'], 'more than the training timesteps T = 1000'),
    (['--preset', 'small', '--train_batch_size', '4'], 'at least 16'),
])
def test_bad_training_combinations(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_raw_dir_is_spelled_both_ways():
    assert get_mnist_data.parse_args(['--raw_dir', 'x']).raw_dir == get_mnist_data.parse_args(['--raw-dir', 'x']).raw_dir


@pytest.mark.parametrize('script, argv', [('get_mnist_data', []), ('train_ddpm_mnist', ['--preset', 'small']),
                                          ('inference_comparison', ['--strategy', 'unipc', '--compare']),
                                          ('edit_digits', ['invert', '--input', 'a.png'])])
def test_parsing_imports_no_torch(script, argv):
    """--help and flag errors are instant: parsing the flags loads neither torch nor the library."""
    import subprocess
    import sys
    from conftest import ROOT
    code = (f'import sys, {script}; {script}.parse_args({argv!r}); '
            'assert not {"torch", "denoising_diffusion_pytorch"} & set(sys.modules), sorted(sys.modules)')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)


@pytest.mark.parametrize('script, argv, fragment', [
    ('inference_comparison', ['--strategy', 'foo'], "'ddpm', 'ddim'"),
    ('inference_comparison', ['--no_such_flag'], 'unrecognized arguments'),
    ('train_ddpm_mnist', ['--preset', 'huge'], "'seed', 'shipped', 'small'"),
    ('get_mnist_data', ['--split', 'half'], "'train', 'test', 'all'"),
    ('edit_digits', ['inpaint', '--mask'], 'expected one argument'),
])
def test_a_bad_flag_is_one_line_with_a_pointer_to_help(script, argv, fragment, capsys):
    import importlib
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and 'usage:' not in err, err
    assert err.startswith('error: ') and fragment in err and '--help' in err


SOURCES = ['*.py', 'scripts/*.py', 'benchmarks/*.py', 'ddpm_mnist/**/*.py']


def test_a_declared_setting_is_made_only_from_its_declaration():
    """A setting declared in settings.SETTINGS is never declared again by hand: every command makes its flag with
    add_setting, so the flag's type, help and rule come from the one declaration."""
    import re
    from pathlib import Path

    from ddpm_mnist.settings import SETTINGS
    root = Path(__file__).resolve().parent.parent
    by_hand = [f'{path.relative_to(root)}: --{name}' for pattern in SOURCES for path in root.glob(pattern)
               for name in re.findall(r"add_argument\(\s*'--(\w+)'", path.read_text()) if name in SETTINGS]
    assert by_hand == []


def test_add_setting_yields_the_flag_its_help_and_its_check(capsys):
    """One declaration gives the flag's type and help (with the command's default) and the parser checks its rule
    after parsing; the API refuses the same value by the same rule."""
    import ddpm_mnist
    from ddpm_mnist.cli.arguments import ArgumentParser, add_setting
    from ddpm_mnist.settings import SETTINGS, at_least
    from ddpm_mnist.utils import BadValue
    parser = ArgumentParser(prog='demo')
    add_setting(parser, 'sample_steps', default=50)
    add_setting(parser, 'ddim_eta', default=0.5)
    add_setting(parser, 'rows', type=int, default=3, help='grid rows', rule=at_least(2))
    assert parser.parse_args(['--sample_steps', '7']).sample_steps == 7
    shown = ' '.join(parser.format_help().split())
    assert SETTINGS['sample_steps'].help in shown and f'{SETTINGS["ddim_eta"].help} (default: 0.5)' in shown
    assert 'grid rows (default: 3)' in shown
    with pytest.raises(BadValue, match=r'^--sample_steps 0 is not allowed: use an integer >= 1$'):
        parser.parse_args(['--sample_steps', '0'])
    with pytest.raises(BadValue, match=r'^--rows 1 is not allowed: use an integer >= 2$'):
        parser.parse_args(['--rows', '1'])
    with pytest.raises(BadValue, match=r'steps=0 is not allowed: use an integer >= 1'):
        ddpm_mnist.sample(ddpm_mnist.load_model(), steps=0)
