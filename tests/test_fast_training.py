"""The training-speed levers keep the maths, the data and the results folder format."""
import json

import pytest
import torch
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import Dataset

import train_ddpm_mnist
from conftest import assert_one_line_error, run_main, train_argv
from ddpm_mnist.model.checkpoints import export_ema, load_checkpoint
from ddpm_mnist.training.step import BASELINE, CachedImages, apply_levers, decode_all, use_bf16_compute
from ddpm_mnist.model.network import build_diffusion
from ddpm_mnist.training.run_folder import read_loss_log

TINY_CONFIG = {'model': dict(dim=8, dim_mults=[1, 2], channels=1),
               'diffusion': dict(image_size=32, timesteps=20, beta_schedule='cosine', objective='pred_v')}


def library_dataset(folder):
    return Dataset(str(folder), 32, augment_horizontal_flip=False, convert_image_to='L')


def test_cached_images_are_what_the_library_dataset_yields(image_folder):
    dataset = library_dataset(image_folder)
    cached = decode_all(dataset)
    expected = torch.stack([dataset[i] for i in range(len(dataset))])
    assert torch.equal(cached.float() / 255, expected)
    batches = CachedImages(cached, 16, generator=torch.Generator().manual_seed(0))
    epoch = torch.cat([next(batches) for _ in range(len(dataset) // 16)])
    rows = {tuple(row.flatten().tolist()) for row in epoch}
    assert len(rows) == len(epoch)  # no image twice within an epoch (shuffled without replacement)


def loss_and_grads(diffusion, images):
    torch.manual_seed(1)
    loss = diffusion(images)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in diffusion.named_parameters() if p.grad is not None}


def plain_and_changed(image_folder, change):
    """Eight real images, a tiny diffusion model, and a copy of it with `change` applied."""
    images = decode_all(library_dataset(image_folder))[:8].float() / 255
    torch.manual_seed(0)
    plain = build_diffusion(TINY_CONFIG)
    changed = build_diffusion(TINY_CONFIG)
    changed.load_state_dict(plain.state_dict())
    change(changed)
    assert changed.state_dict().keys() == plain.state_dict().keys()
    return images, plain, changed


@pytest.mark.parametrize('full', [True, False])
def test_layout_levers_keep_loss_and_gradients(image_folder, full):
    levers = {**BASELINE, 'channels_last': True, 'fast_linear_attention': True, 'fast_full_attention': full}
    images, plain, fast = plain_and_changed(image_folder, lambda d: apply_levers(d, levers))
    kinds = {type(m).__name__ for m in fast.modules()}
    assert 'FastLinearAttention' in kinds and ('FastAttention' in kinds) == full
    loss_a, grads_a = loss_and_grads(plain, images)
    loss_b, grads_b = loss_and_grads(fast, images.contiguous(memory_format=torch.channels_last))
    assert abs(loss_a - loss_b) < 1e-5
    assert max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a) < 1e-4


def test_bf16_compute_trains_the_fp32_master_weights(image_folder):
    images, plain, bf16 = plain_and_changed(image_folder, lambda d: use_bf16_compute(d.model))
    loss_a, _ = loss_and_grads(plain, images)
    loss_b, grads_b = loss_and_grads(bf16, images)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(g.dtype == torch.float32 and g.isfinite().all() for g in grads_b.values())
    assert abs(loss_a - loss_b) < 0.05 * loss_a


def test_unreadable_training_image_stops_before_anything_is_written(tmp_path, image_folder, capsys):
    for bad_name, content in (('fake.png', b'this is text'), ('cut.png', None)):
        folder = tmp_path / f'data-{bad_name}'
        folder.mkdir()
        for p in sorted(image_folder.glob('*.png')):
            (folder / p.name).write_bytes(p.read_bytes())
        first = sorted(image_folder.glob('*.png'))[0].read_bytes()
        (folder / bad_name).write_bytes(content if content is not None else first[:len(first) // 2])
        results = tmp_path / f'r-{bad_name}'
        code, _, err = run_main(train_ddpm_mnist.main, train_argv(folder, results), capsys)
        assert_one_line_error(code, err, bad_name, 'cannot be read')
        assert not results.exists()


def test_loss_log_survives_resume_and_export_records_provenance(tmp_path, image_folder, capsys):
    results = tmp_path / 'r'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)[0] == 0
    losses = read_loss_log(results)
    assert sorted(losses) == [1, 2, 3, 4] and all(0 < v < 10 for v in losses.values())
    ckpt = load_checkpoint(results / 'model-2.pt')
    assert ckpt['wall_seconds'] > 0 and ckpt['machines']
    export_ema(results / 'model-2.pt', tmp_path / 'export' / 'model')
    record = json.loads((tmp_path / 'export' / 'model.json').read_text())
    prov = record['provenance']
    assert prov['steps'] == 4 and prov['images_seen'] == 4 * 16 and prov['training_images'] == 120
    assert prov['command'].startswith('python3 train_ddpm_mnist.py') and prov['versions']['torch']
    assert str(tmp_path) not in json.dumps(record)  # no absolute path of the build machine


def test_nan_weights_are_never_resumed(tmp_path, image_folder, capsys):
    results = tmp_path / 'r'
    assert run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=2), capsys)[0] == 0
    ckpt = torch.load(results / 'model-1.pt', weights_only=True)
    ckpt['model'][next(k for k in ckpt['model'] if k.endswith('init_conv.weight'))].fill_(float('nan'))
    torch.save(ckpt, results / 'model-1.pt')
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, results, steps=4), capsys)
    assert_one_line_error(code, err, 'model-1.pt', 'NaN')
    assert sorted(p.name for p in results.glob('model-*.pt')) == ['model-1.pt']


def test_bf16_compute_from_the_command_line(tmp_path, image_folder, capsys):
    results = tmp_path / 'r'
    argv = train_argv(image_folder, results, steps=2, extra=('--mixed_precision_type', 'bf16_compute'))
    assert run_main(train_ddpm_mnist.main, argv, capsys)[0] == 0
    ckpt = load_checkpoint(results / 'model-1.pt')
    assert ckpt['config']['training']['mixed_precision'] == 'bf16_compute'
    assert all(v.dtype == torch.float32 for k, v in ckpt['model'].items() if v.is_floating_point())  # fp32 master
    assert all(0 < loss < 10 for loss in read_loss_log(results).values())
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(image_folder, tmp_path / 's', steps=2, extra=(
        '--mixed_precision_type', 'bf16_compute', '--no-fast_path')), capsys)
    assert code == 2 and 'needs the fast path' in err
