"""Editing (edit_digits.py): each operation on a tiny model, the maths checked where it can be, and every bad
input refused in one line with nothing written."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import edit_digits
from conftest import assert_one_line_error, run_main
from ddpm_mnist.sampling import editing
from ddpm_mnist.sampling.images import named_mask
from ddpm_mnist.sampling.registry import SamplerSettings
from ddpm_mnist.model.checkpoints import load_model


@pytest.fixture(scope='module')
def tiny(trained_run):
    diffusion, _, _ = load_model(trained_run / 'model-2.pt')
    return diffusion.eval()


@pytest.fixture
def pngs(tmp_path):
    paths = []
    for i in range(2):
        pixels = np.zeros((56, 56, 3), dtype=np.uint8)
        pixels[10 + 5 * i:40, 20:30] = 255
        path = tmp_path / f'digit{i}.png'
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_repaint_schedule_is_the_papers():
    path = editing.repaint_schedule(30, jump_length=10, resamples=3)
    downs = sum(1 for a, b in zip(path, path[1:]) if b == a - 1)
    ups = sum(1 for a, b in zip(path, path[1:]) if b == a + 1)
    assert path[0] == 29 and path[-1] == -1 and all(abs(b - a) == 1 for a, b in zip(path, path[1:]))
    assert ups == 2 * 2 * 10  # jump points 0 and 10, each re-noised resamples - 1 = 2 times over 10 levels
    assert downs == 30 + ups
    assert editing.repaint_schedule(30, resamples=1) == list(range(29, -2, -1))  # plain replacement


def test_inpainting_keeps_the_known_pixels_exactly(tiny):
    images = torch.rand(3, 1, 32, 32)
    mask = named_mask('bottom', 32)
    for steps in (None, 5):
        out, nfe = editing.inpaint(tiny, images, mask, steps=steps, jump_length=2, resamples=2, seed=1)
        keep = (1 - mask).bool().expand_as(images)
        assert torch.allclose(out[keep], images[keep].clamp(0, 1), atol=1e-6)
        assert out.shape == images.shape and nfe > (steps or tiny.num_timesteps)
        again, _ = editing.inpaint(tiny, images, mask, steps=steps, jump_length=2, resamples=2, seed=1)
        assert torch.equal(out, again)  # --seed makes it repeat


def test_library_repaint_loop_runs_on_our_weights(tiny):
    images = torch.rand(2, 1, 32, 32)
    out, nfe = editing.library_repaint(tiny, images, named_mask('top', 32), resample_iter=1, resample_jump=2,
                                       resample_every=10)
    assert out.shape == images.shape and nfe > tiny.num_timesteps


def test_inversion_then_generation_reconstructs_the_models_own_sample():
    """DDIM inversion of a sample the same deterministic chain made comes back to it, the closer the more steps
    (the inversion's one approximation, eps at x_t for the step to x_t_next, shrinks with the step)."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(Unet(dim=8, dim_mults=(1, 2), channels=1), image_size=16, timesteps=200).eval()
    x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    psnr = []
    for steps in (20, 50, 200):
        sample = editing.ddim_generate(diffusion, x_T, steps=steps)
        psnr.append(float(editing.invert(diffusion, sample, steps=steps).psnr.min()))
    assert psnr[0] < psnr[1] < psnr[2] and psnr[2] > 40


def test_sdedit_strength_moves_from_the_input_to_a_sample(tiny):
    images = torch.rand(2, 1, 32, 32)
    ddim20 = SamplerSettings.resolve('ddim', 20, total_timesteps=tiny.num_timesteps)
    light, nfe_light = editing.sdedit(tiny, images, strength=0.1, settings=ddim20, seed=0)
    heavy, nfe_heavy = editing.sdedit(tiny, images, strength=1.0, settings=ddim20, seed=0)
    assert nfe_light < nfe_heavy == 20
    assert (light - images).abs().mean() < (heavy - images).abs().mean()
    for strategy in ('ddpm', 'dpmpp_2m', 'euler_a'):
        settings = SamplerSettings.resolve(strategy, 10, total_timesteps=tiny.num_timesteps)
        out, _ = editing.sdedit(tiny, images, strength=0.5, settings=settings, seed=0)
        assert out.shape == images.shape and out.isfinite().all()


def test_slerp_keeps_the_norm_and_the_ends(tiny):
    a, b = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
    assert torch.allclose(editing.slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(editing.slerp(a, b, 1.0), b,
                                                                                      atol=1e-5)
    middle = editing.slerp(a, b, 0.5)
    assert abs(middle.norm() - (a.norm() + b.norm()) / 2) < 0.1 * a.norm()
    frames = editing.interpolate(tiny, a, b, frames=4, steps=5)
    assert frames.shape == (4, 1, 32, 32)


@pytest.mark.parametrize('operation', ['inpaint', 'sdedit', 'invert', 'interpolate'])
def test_each_command_writes_its_grid_and_record(trained_run, pngs, tmp_path, operation, capsys):
    extra = {'inpaint': ['--input', *map(str, pngs), '--mask', 'centre', '--steps', '4', '--resamples', '2',
                         '--jump_length', '2'],
             'sdedit': ['--input', *map(str, pngs), '--strength', '0.5', '--steps', '6'],
             'invert': ['--input', *map(str, pngs), '--steps', '5'],
             'interpolate': ['--seeds', '1', '2', '--frames', '3', '--steps', '4', '--gif']}[operation]
    out = tmp_path / 'out'
    argv = [operation, *extra, '--checkpoint', str(trained_run / 'model-2.pt'), '--results_folder', str(out)]
    code, stdout, err = run_main(edit_digits.main, argv, capsys)
    assert code == 0, err
    folder = next(out.glob('inference_model-2_*')) / 'edit'
    grids = sorted(p.name for p in folder.glob('*.png'))
    records = [json.loads(p.read_text()) for p in folder.glob('*.json')]
    assert grids and records[0]['operation'] == operation
    if operation != 'interpolate':
        assert '56x56 RGB -> 32x32 grayscale' in stdout and any('side_by_side' in g for g in grids)
    if operation == 'invert':
        assert 'PSNR' in stdout
    if operation == 'interpolate':
        assert list(folder.glob('*.gif'))


@pytest.mark.parametrize('operation', ['inpaint', 'sdedit', 'invert', 'interpolate'])
def test_every_edit_runs_on_the_shipped_conditional_model(pngs, tmp_path, operation, capsys):
    """A class-conditional model edits unconditioned (its null label), in every mode."""
    from ddpm_mnist.settings import SHIPPED_CONDITIONAL
    extra = {'inpaint': ['--input', str(pngs[0]), '--mask', 'bottom', '--steps', '4', '--resamples', '2',
                         '--jump_length', '2'],
             'sdedit': ['--input', str(pngs[0]), '--strength', '0.5', '--steps', '6'],
             'invert': ['--input', str(pngs[0]), '--steps', '5'],
             'interpolate': ['--seeds', '1', '2', '--frames', '3', '--steps', '4']}[operation]
    argv = [operation, *extra, '--checkpoint', str(SHIPPED_CONDITIONAL), '--results_folder', str(tmp_path),
            '--precision', 'fp32']
    code, _, err = run_main(edit_digits.main, argv, capsys)
    assert code == 0, err
    assert list(tmp_path.glob('inference_ddpm_mnist_conditional_*/edit/*.png'))


def test_conditional_edits_follow_digits(pngs, tmp_path, capsys):
    """--conditional --digits D: SDEdit from pure noise (strength 1) draws the digit asked for, one per input, and
    the grid is named and recorded apart from the unconditioned edit."""
    from ddpm_mnist.evaluation.classifier import classify, load_classifier
    argv = ['sdedit', '--input', str(pngs[0]), str(pngs[1]), '--strength', '1', '--steps', '20', '--conditional',
            '--results_folder', str(tmp_path), '--precision', 'fp32', '--digits', '3', '8']
    code, stdout, err = run_main(edit_digits.main, argv, capsys)
    assert code == 0, err
    record_path, = tmp_path.glob('*conditional*/edit/sdedit_ddim20_strength1.0_digits3-8.json')
    assert json.loads(record_path.read_text())['digits'] == [3, 8]
    grid = torch.from_numpy(np.asarray(Image.open(record_path.with_suffix('.png')).convert('L'), np.float32) / 255)
    cells = [grid[2:58, 2:58], grid[2:58, 60:116]]  # make_grid: 2 px padding around digits shown at 56 px
    _, probs = classify(load_classifier(), torch.stack(cells)[:, None])
    assert probs.argmax(1).tolist() == [3, 8]


@pytest.mark.parametrize('argv, message', [
    (['--conditional', '--digits', '3', '4', '5'], '--digits gives 3 digits for 2 input(s)'),
    (['--digits', '3'], '--digits needs a class-conditional model'),
    (['--conditional', '--digits', '12'], '--digits 12 is not allowed'),
])
def test_bad_digits_for_editing_are_one_line(pngs, tmp_path, argv, message, capsys):
    base = ['invert', '--input', str(pngs[0]), str(pngs[1]), '--steps', '3', '--results_folder', str(tmp_path / 'o')]
    code, _, err = run_main(edit_digits.main, base + argv, capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / 'o').exists()


def test_weights_beyond_fp16_are_named_before_casting():
    from ddpm_mnist.model.checkpoints import check_fits_precision
    from ddpm_mnist.utils import BadValue
    weights = [torch.ones(3), torch.tensor([1.0, -7e4])]
    check_fits_precision('w.safetensors', weights, 'bf16')  # bf16 has float32's range
    with pytest.raises(BadValue, match=r'w.safetensors: weights reach 7e\+04, beyond the largest fp16 value'):
        check_fits_precision('w.safetensors', weights, 'fp16')


def test_the_same_seed_repeats_an_edit(trained_run, pngs, tmp_path, capsys):
    grids = []
    for run in 'ab':
        out = tmp_path / run
        argv = ['sdedit', '--input', str(pngs[0]), '--strength', '0.6', '--steps', '5', '--checkpoint',
                str(trained_run / 'model-2.pt'), '--results_folder', str(out), '--seed', '4']
        assert run_main(edit_digits.main, argv, capsys)[0] == 0
        grids.append(next(out.rglob('sdedit_*strength0.6.png')).read_bytes())
    assert grids[0] == grids[1]


def bad_inputs(pngs, tmp_path):
    other = tmp_path / 'other.png'
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(other)
    small_mask = tmp_path / 'small_mask.png'
    Image.fromarray(np.full((10, 10), 255, dtype=np.uint8)).save(small_mask)
    full_mask, empty_mask = tmp_path / 'full.png', tmp_path / 'empty.png'
    Image.fromarray(np.full((56, 56), 255, dtype=np.uint8)).save(full_mask)
    Image.fromarray(np.zeros((56, 56), dtype=np.uint8)).save(empty_mask)
    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    a = str(pngs[0])
    return [
        (['inpaint', '--input', a, '--mask', str(small_mask)], 'mask'),
        (['inpaint', '--input', a, '--mask', str(full_mask)], 'keeps no pixel'),
        (['inpaint', '--input', a, '--mask', str(empty_mask)], 'keeps every pixel'),
        (['inpaint', '--input', a, '--mask', 'diagonal'], 'top, bottom, left, right, centre'),
        (['sdedit', '--input', str(text), '--strength', '0.5'], 'not an image'),
        (['sdedit', '--input', a, '--strength', '0'], '--strength'),
        (['sdedit', '--input', a, '--strength', '1.5'], '--strength'),
        (['interpolate', '--seeds', '1', '2', '--frames', '1'], '--frames'),
        (['invert', '--input', a, str(other)], 'different sizes'),
        (['invert', '--input', str(tmp_path / 'missing.png')], 'does not exist'),
    ]


def test_bad_edit_inputs_are_one_line_and_write_nothing(trained_run, pngs, tmp_path, capsys):
    for argv, message in bad_inputs(pngs, tmp_path):
        out = tmp_path / 'never'
        code, _, err = run_main(edit_digits.main, [*argv, '--checkpoint', str(trained_run / 'model-2.pt'),
                                                   '--results_folder', str(out)], capsys)
        assert_one_line_error(code, err, message)
        assert not out.exists(), argv


def test_edit_figure_has_one_row_per_operation(trained_run, idx_dir, tmp_path, capsys):
    from conftest import load_script
    from ddpm_mnist.api import load_model as load_api_model
    script = load_script('edit_figure')
    model = load_api_model(trained_run / 'model-2.pt', device='cpu', precision='fp32')
    digits = torch.rand(4, 1, 32, 32)
    rows = script.edit_rows(model, digits, seed=0, inpaint_steps=3)
    assert tuple(rows) == script.ROWS and all(images.shape == (8, 1, 32, 32) for images in rows.values())
    assert torch.allclose(rows['inpaint'][1::2, :, :16], digits[:, :, :16], atol=1e-6)  # the kept top half
    assert torch.equal(rows['sdedit'][0::2], digits) and torch.equal(rows['invert'][0::2], digits)  # the inputs
    out = tmp_path / 'editing.png'
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--raw_dir', str(idx_dir), '--inpaint_steps', '3',
            '--output', str(out)]
    code, _, err = run_main(script.main, argv, capsys)
    assert code == 0, err
    width, height = Image.open(out).size
    assert width > height and not list(tmp_path.glob('.*'))  # one figure, no temporary left


def test_edit_benchmark_resumes_from_its_saved_measurements(trained_run, idx_dir, tmp_path, capsys):
    """Every measurement is saved as it is made; the same command again reuses them all and writes the same table,
    and another seed measures afresh."""
    from conftest import load_script
    script = load_script('edit_benchmark')
    out = tmp_path / 'editing'
    argv = ['--checkpoint', str(trained_run / 'model-2.pt'), '--raw_dir', str(idx_dir), '--num_digits', '10',
            '--methods', 'replacement,repaint_ddim', '--ddim_steps', '3', '--inversion_steps', '2',
            '--strengths', '0.5', '--batch_size', '10', '--output', str(out), '--cache_dir', str(tmp_path / 'cache')]
    code, first, err = run_main(script.main, argv, capsys)
    assert code == 0, err
    table = out.with_suffix('.md').read_text()
    measured = json.loads(out.with_suffix('.json').read_text())['measured']
    assert set(measured) == {'inpaint:replacement', 'inpaint:repaint_ddim:3', 'inpaint:real_digits', 'invert:2',
                             'sdedit:0.5'}
    shares = re.findall(r'\| (\d+\.\d) % \[(\d+\.\d), (\d+\.\d)\] \|', table)  # label agreement and kept
    assert len(shares) == 3 and all(float(lo) <= float(v) <= float(hi) for v, lo, hi in shares), table
    code, again, err = run_main(script.main, argv, capsys)
    assert code == 0 and again.count('from the earlier run') == 5, again
    assert out.with_suffix('.md').read_text() == table and not list(tmp_path.glob('.*'))
    code, other, err = run_main(script.main, [*argv, '--seed', '1'], capsys)
    assert code == 0 and 'from the earlier run' not in other, other


def test_inpainting_resumes_batch_by_batch_from_its_cache(trained_run, tmp_path, monkeypatch):
    """A killed RePaint run keeps its finished batches: the same call again returns the same images without one
    Unet call for a cached batch, and only the missing batch is computed."""
    import ddpm_mnist.sampling.editing as editing
    from ddpm_mnist.api import load_model as load_api_model
    from ddpm_mnist.runtime import BatchCache
    model = load_api_model(trained_run / 'model-2.pt', device='cpu', precision='fp32')
    digits, mask = torch.rand(6, 1, 32, 32), named_mask('bottom', 32)
    settings = dict(steps=3, eta=0.0, resamples=2, jump_length=2, seed=0, batch_size=3)
    plain, nfe = editing.inpaint(model.diffusion, digits, mask, **settings)
    cache = BatchCache(tmp_path / 'cache')
    cached, cached_nfe = editing.inpaint(model.diffusion, digits, mask, cache=cache, **settings)
    assert torch.equal(plain, cached) and nfe == cached_nfe and cache.computed == 6
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == ['batch-0000000.npy', 'batch-0000003.npy']
    (tmp_path / 'cache' / 'batch-0000003.npy').unlink()  # as if killed during the second batch
    calls = []
    real_predict = editing.predict
    monkeypatch.setattr(editing, 'predict', lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    resumed = BatchCache(tmp_path / 'cache')
    again, _ = editing.inpaint(model.diffusion, digits, mask, cache=resumed, **settings)
    assert torch.equal(again, plain) and resumed.computed == 3 and len(calls) == nfe  # one batch's Unet calls
    # a smaller run's short last batch (2 of 3 images) is not taken for the full batch of a larger run
    short = BatchCache(tmp_path / 'short')
    editing.inpaint(model.diffusion, digits[:5], mask, cache=short, **settings)
    larger, _ = editing.inpaint(model.diffusion, digits, mask, cache=short, **settings)
    assert torch.equal(larger, plain) and short.computed == 5 + 3
