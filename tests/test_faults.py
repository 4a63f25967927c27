"""Faults: processes killed at bad moments, damaged and hostile checkpoints, a shared results folder."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import inference_comparison
import train_ddpm_mnist
from conftest import ROOT, assert_one_line_error, run_main, train_argv
from ddpm_mnist.model.checkpoints import load_checkpoint, load_model
from ddpm_mnist.training.run_folder import milestones

# Runs a script in a child process after installing one fault: SIGKILL of itself when `kind` happens
# for the `nth` time. Kinds: 'rename' (os.replace onto model-N.pt, i.e. between writing the temporary
# file and renaming it), 'step' (an optimiser step), 'sample' (drawing a milestone grid), 'png' (the data
# script writing an image).
INJECT = r'''
import os, runpy, signal, sys
kind, nth, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv = [script] + sys.argv[4:]
count = [0]
def hit():
    count[0] += 1
    if count[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
def wrap(owner, name, test=lambda *a, **k: True):
    real = getattr(owner, name)
    def wrapped(*a, **k):
        if test(*a, **k):
            hit()
        return real(*a, **k)
    setattr(owner, name, wrapped)
if kind == 'rename':
    wrap(os, 'replace', lambda src, dst: os.path.basename(str(dst)).startswith('model-'))
elif kind == 'step':
    import torch
    wrap(torch.optim.Adam, 'step')
elif kind == 'sample':  # the milestone grids are drawn through the project's sampling loop
    import ddpm_mnist.sampling.loop as loop
    wrap(loop, 'sample')
elif kind == 'png':
    from PIL import Image
    wrap(Image.Image, 'save')
runpy.run_path(script, run_name='__main__')
'''


def run_with_fault(kind, nth, script, argv, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-c', INJECT, kind, str(nth), str(ROOT / script), *argv],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('kind, nth, survivors', [
    ('step', 5, [1, 2]),       # during the 5th optimiser step: milestones 1 (step 2) and 2 (step 4) exist
    ('sample', 3, [1, 2]),     # while drawing the grid of milestone 3
    ('rename', 3, [1, 2]),     # after writing model-3.pt's temporary file, before the rename
])
def test_sigkill_during_training_then_resume(tmp_path, image_folder, kind, nth, survivors, capsys):
    results = tmp_path / 'r'
    argv = train_argv(image_folder, results, steps=8, every=2)
    killed = run_with_fault(kind, nth, 'train_ddpm_mnist.py', argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert milestones(results) == survivors
    before = {m: (results / f'model-{m}.pt').read_bytes() for m in survivors}
    for m in survivors:
        assert load_checkpoint(results / f'model-{m}.pt')['step'] == 2 * m
    resumed = subprocess.run([sys.executable, str(ROOT / 'train_ddpm_mnist.py'), *argv], cwd=ROOT,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'resumed from milestone {survivors[-1]}' in resumed.stdout
    assert milestones(results) == [1, 2, 3, 4]
    assert load_checkpoint(results / 'model-4.pt')['step'] == 8
    assert all((results / f'model-{m}.pt').read_bytes() == data for m, data in before.items())
    assert not list(results.glob('.model-*'))  # the killed run's temporary file was cleaned up


def test_sigkill_during_data_conversion_then_rerun(tmp_path, idx_dir):
    out = tmp_path / 'mnist'
    argv = ['--raw-dir', str(idx_dir), '--output', str(out)]
    killed = run_with_fault('png', 60, 'get_mnist_data.py', argv)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()  # only a hidden partial folder, never one that looks complete
    rerun = subprocess.run([sys.executable, str(ROOT / 'get_mnist_data.py'), *argv], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and 'wrote 120 images' in rerun.stdout
    assert len(list(out.glob('*.png'))) == 120 and sorted(p.name for p in tmp_path.iterdir()) == ['mnist']


def test_second_training_process_on_the_same_folder_is_refused(tmp_path, image_folder):
    results = tmp_path / 'r'
    argv = train_argv(image_folder, results, steps=400, every=200)
    first = subprocess.Popen([sys.executable, str(ROOT / 'train_ddpm_mnist.py'), *argv], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (results / 'config.json').exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run([sys.executable, str(ROOT / 'train_ddpm_mnist.py'), *argv], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and 'in use by a running training process' in second.stderr
        assert f'pid {first.pid}' in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed holder leaves no stuck lock: the next run starts
    third = subprocess.run([sys.executable, str(ROOT / 'train_ddpm_mnist.py'),
                            *train_argv(image_folder, results, steps=2, every=200)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr[-1000:]


def _state_dicts(trained_run):
    return torch.load(trained_run / 'model-2.pt', weights_only=True)


@pytest.mark.parametrize('damage, message', [
    (lambda c: c['ema'].pop(next(k for k in c['ema'] if k.startswith('ema_model.model.downs'))), 'do not fit'),
    (lambda c: c['ema'].update({k: torch.zeros(3) for k in c['ema'] if k.endswith('final_conv.weight')}),
     'do not fit'),
    (lambda c: c.pop('ema'), 'no EMA weights'),
    (lambda c: c['ema'].update({k: torch.full_like(v, float('nan')) for k, v in c['ema'].items()
                                if k.startswith('ema_model.model.') and v.is_floating_point()}), 'NaN'),
])
def test_damaged_checkpoint_contents(trained_run, tmp_path, damage, message, capsys):
    ckpt = _state_dicts(trained_run)
    damage(ckpt)
    path = tmp_path / 'model-9.pt'
    torch.save(ckpt, path)
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(path), '--num_samples', '1'], capsys)
    assert_one_line_error(code, err, message, str(path))


def test_random_bytes_checkpoint(tmp_path, capsys):
    path = tmp_path / 'model-1.pt'
    path.write_bytes(os.urandom(4096))
    code, _, err = run_main(inference_comparison.main, ['--checkpoint', str(path)], capsys)
    assert_one_line_error(code, err, str(path))
    with pytest.raises(Exception, match='model-1.pt'):
        load_model(path)


def test_two_process_training_through_accelerate(tmp_path, image_folder, capsys):
    """accelerate launch with 2 CPU processes (gloo): one config, one set of checkpoints, loadable."""
    results = tmp_path / 'dist'
    launch = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
              '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no']
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    run = subprocess.run([*launch, str(ROOT / 'train_ddpm_mnist.py'), *train_argv(image_folder, results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'device cpu x 2' in run.stdout and 'effective batch 32 (16 per process x 1 accumulation x 2' in run.stdout
    assert run.stdout.count('preset small') == 1  # only the main process reports
    assert milestones(results) == [1, 2] and load_checkpoint(results / 'model-2.pt')['step'] == 4
    code, out, _ = run_main(inference_comparison.main, ['--checkpoint', str(results / 'model-2.pt'), '--strategy',
                                                        'ddim', '--sample_steps', '2', '--num_samples', '2',
                                                        '--results_folder', str(tmp_path)], capsys)
    assert code == 0 and 'EMA weights' in out


# ---------------------------------------------------------------- a full disk at every write

def no_space(*args, **kwargs):
    raise OSError(28, 'No space left on device')


def test_full_disk_at_a_milestone_grid_keeps_its_checkpoint(tmp_path, image_folder, monkeypatch, capsys):
    from PIL import Image
    results = tmp_path / 'grid'
    monkeypatch.setattr(Image.Image, 'save', no_space)
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)
    assert_one_line_error(code, err, 'No space left on device', 'sample-1.png', 'model-1.pt was written')
    assert milestones(results) == [1] and not (results / 'sample-1.png').exists()
    assert not [p for p in results.iterdir() if '.tmp-' in p.name]


def test_full_disk_at_export_leaves_the_shipped_pair_unchanged(trained_run, tmp_path, monkeypatch, capsys):
    from ddpm_mnist.model import checkpoints
    from ddpm_mnist.cli import export
    stem = tmp_path / 'shipped'
    checkpoints.export_ema(trained_run / 'model-1.pt', stem)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(checkpoints, 'save_file', no_space)
    code, _, err = run_main(export.main, [str(trained_run / 'model-2.pt'), str(stem), '--no-compare'], capsys)
    assert_one_line_error(code, err, 'No space left on device', 'shipped.safetensors', 'unchanged')
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_full_disk_in_the_data_step_writes_nothing(tmp_path, idx_dir, monkeypatch, capsys):
    import get_mnist_data
    from PIL import Image
    monkeypatch.setattr(Image.Image, 'save', no_space)
    out = tmp_path / 'png'
    code, _, err = run_main(get_mnist_data.main, ['--raw_dir', str(idx_dir), '--output', str(out)], capsys)
    assert_one_line_error(code, err, 'No space left on device', 'nothing was written')
    assert list(tmp_path.iterdir()) == []


def test_full_disk_in_the_sweep_cache(trained_run, idx_dir, tmp_path, monkeypatch, capsys):
    import numpy as np
    monkeypatch.setattr(np, 'save', no_space)
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--compare', '--compare_samplers', 'ddim',
            '--compare_steps', '2', '--compare_etas', '0', '--num_samples', '8', '--results_folder', str(tmp_path),
            '--raw_dir', str(idx_dir)]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'No space left on device', 'features.npy')
    assert not [p for p in tmp_path.rglob('*') if '.tmp-' in p.name]


# ---------------------------------------------------------------- settings checked before anything is made

def test_impossible_batch_is_refused_before_anything_is_built(tmp_path, image_folder, capsys):
    results = tmp_path / 'big'
    argv = train_argv(image_folder, results, extra=['--train_batch_size', '100000'])
    code, _, err = run_main(train_ddpm_mnist.main, argv, capsys)
    assert_one_line_error(code, err, 'needs 100000 images', 'holds 120', 'at most 120')
    assert not results.exists()


def test_memory_warning_names_a_batch_that_fits(monkeypatch, capsys):
    import copy
    import re
    from ddpm_mnist.training import command as training
    from ddpm_mnist.settings import PRESETS
    config = copy.deepcopy(PRESETS['shipped'])
    config['training']['train_batch_size'] = 4096
    available = 3e9
    monkeypatch.setattr(training, 'available_bytes', lambda: int(available))
    training.memory_warning(config, 'cpu')
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('WARNING: one training step at --train_batch_size 4096')
    fits = int(re.search(r'--train_batch_size (\d+) \(with', err).group(1))
    assert 1 <= fits < 4096
    assert training.step_bytes(config, fits) < 0.9 * available < training.step_bytes(config, fits + 1)
    monkeypatch.setattr(training, 'available_bytes', lambda: int(1e12))
    training.memory_warning(config, 'cpu')
    assert capsys.readouterr().err == ''



def test_cpu_duration_warning_only_for_the_original_size(capsys):
    import copy
    from ddpm_mnist.training import command as training
    from ddpm_mnist.settings import PRESETS
    training.cpu_warning(copy.deepcopy(PRESETS['seed']), 'cpu')
    assert capsys.readouterr().err.startswith("WARNING: training the original's Unet on the CPU")
    wide = copy.deepcopy(PRESETS['shipped'])
    wide['model']['dim'] = 48           # wider than shipped, far smaller than the original: no 37-hour warning
    training.cpu_warning(wide, 'cpu')
    training.cpu_warning(copy.deepcopy(PRESETS['seed']), 'cuda')
    assert capsys.readouterr().err == ''

def test_named_raw_dir_that_does_not_exist_is_an_error(trained_run, tmp_path, capsys):
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--quick', '--num_samples', '4',
            '--results_folder', str(tmp_path / 'out'), '--raw_dir', str(tmp_path / 'no-such-folder')]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'no-such-folder')


@pytest.mark.parametrize('strategy', ['ddim', 'unipc'])
def test_refused_sample_steps_leave_no_folders(trained_run, tmp_path, strategy, capsys):
    out = tmp_path / 'out'
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--strategy', strategy, '--sample_steps', '1001',
            '--results_folder', str(out)]
    code, _, err = run_main(inference_comparison.main, argv, capsys)
    assert_one_line_error(code, err, 'sample_steps')
    assert not out.exists()


def test_refused_nan_resume_leaves_no_lock(tmp_path, image_folder, capsys):
    results = tmp_path / 'nan'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    (results / '.lock').unlink(missing_ok=True)
    ckpt = torch.load(results / 'model-1.pt', weights_only=True)
    ckpt['model'] = {k: torch.full_like(v, float('nan')) if k.startswith('model.') and v.is_floating_point() else v
                     for k, v in ckpt['model'].items()}
    torch.save(ckpt, results / 'model-1.pt')
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert_one_line_error(code, err, 'NaN')
    assert not (results / '.lock').exists()


def test_failed_download_leaves_no_cache_folders(tmp_path, monkeypatch, capsys):
    import get_mnist_data
    import torchvision.datasets

    class OfflineMNIST:  # as torchvision does: the cache folders first, then the download that fails
        def __init__(self, root, **kwargs):
            (Path(root) / 'MNIST' / 'raw').mkdir(parents=True)
            raise RuntimeError('Error downloading train-images-idx3-ubyte.gz:\nName or service not known')
    monkeypatch.setattr(torchvision.datasets, 'MNIST', OfflineMNIST)
    root = tmp_path / 'cache'
    code, _, err = run_main(get_mnist_data.main, ['--data_root', str(root), '--output', str(tmp_path / 'png')],
                            capsys)
    assert_one_line_error(code, err, 'could not download MNIST')
    assert not root.exists() and not (tmp_path / 'png').exists()
