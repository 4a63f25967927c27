import csv
import json

import numpy as np
import pytest
from PIL import Image

import get_mnist_data
from conftest import SHARED_MNIST, assert_one_line_error, run_main, write_idx_dir
from ddpm_mnist import data, datasets


def test_raw_dir_writes_original_names_labels_and_info(tmp_path, idx_dir, capsys):
    out = tmp_path / 'folder'
    code, stdout, _ = run_main(get_mnist_data.main, ['--raw-dir', str(idx_dir), '--output', str(out)], capsys)
    assert code == 0 and 'wrote 120 images' in stdout
    pngs = sorted(p.name for p in out.glob('*.png'))
    assert pngs[0] == 'mnist_train_00000.png' and pngs[-1] == 'mnist_train_00119.png' and len(pngs) == 120
    images, labels = datasets.read_raw_split(idx_dir, 'train')
    assert np.array_equal(np.asarray(Image.open(out / 'mnist_train_00007.png')), images[7])
    with open(out / 'labels.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['label']) for r in rows] == labels.tolist()
    assert json.loads((out / 'dataset.json').read_text())['num_images'] == 120


def test_uncompressed_idx_and_split_all(tmp_path, capsys):
    raw = write_idx_dir(tmp_path / 'raw', n_train=110, n_test=15, gz=False)
    out = tmp_path / 'all'
    code, _, _ = run_main(get_mnist_data.main, ['--raw-dir', str(raw), '--output', str(out), '--split', 'all'], capsys)
    assert code == 0
    assert len(list(out.glob('mnist_train_*.png'))) == 110 and len(list(out.glob('mnist_test_*.png'))) == 15


def test_rerun_is_a_no_op_and_force_rebuilds(tmp_path, idx_dir, capsys):
    out = tmp_path / 'folder'
    argv = ['--raw-dir', str(idx_dir), '--output', str(out)]
    run_main(get_mnist_data.main, argv, capsys)
    marker = out / 'mnist_train_00000.png'
    before = marker.stat().st_mtime_ns
    code, stdout, _ = run_main(get_mnist_data.main, argv, capsys)
    assert code == 0 and 'already complete' in stdout and marker.stat().st_mtime_ns == before
    code, stdout, _ = run_main(get_mnist_data.main, argv + ['--force'], capsys)
    assert code == 0 and 'wrote 120' in stdout and marker.stat().st_mtime_ns != before


def test_interrupted_write_leaves_no_complete_looking_folder(tmp_path, idx_dir, monkeypatch, capsys):
    out = tmp_path / 'folder'
    real_save, calls = Image.Image.save, []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 50:
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, 'save', failing_save)
    code, _, _ = run_main(get_mnist_data.main, ['--raw-dir', str(idx_dir), '--output', str(out)], capsys)
    assert code == 130
    assert not out.exists() and not data.folder_is_complete(out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Image.Image, 'save', real_save)
    code, stdout, _ = run_main(get_mnist_data.main, ['--raw-dir', str(idx_dir), '--output', str(out)], capsys)
    assert code == 0 and data.folder_is_complete(out) and len(list(out.glob('*.png'))) == 120


def test_offline_download_gives_one_clear_message(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, *args, **kwargs):
            raise RuntimeError('Error downloading train-images-idx3-ubyte.gz:\nName or service not known')

    monkeypatch.setattr(torchvision.datasets, 'MNIST', OfflineMNIST)
    code, _, err = run_main(get_mnist_data.main, ['--root', str(tmp_path), '--output', str(tmp_path / 'o')], capsys)
    assert_one_line_error(code, err, 'could not download MNIST (Error downloading train-images-idx3-ubyte.gz: Name or '
                          'service not known)', '--raw_dir')  # the cause, not an empty first line
    assert not (tmp_path / 'o').exists()


def test_download_path_uses_torchvision(tmp_path, monkeypatch, capsys):
    import torch
    import torchvision.datasets

    class FakeMNIST:
        def __init__(self, root, train, download):
            assert download
            n = 100 if train else 10
            self.data = torch.full((n, 28, 28), 7, dtype=torch.uint8)
            self.targets = torch.arange(n) % 10

    monkeypatch.setattr(torchvision.datasets, 'MNIST', FakeMNIST)
    code, _, _ = run_main(get_mnist_data.main, ['--root', str(tmp_path), '--output', str(tmp_path / 'o')], capsys)
    assert code == 0 and len(list((tmp_path / 'o').glob('mnist_train_*.png'))) == 100


def corrupt(raw, name, transform):
    path = raw / f'{name}.gz'
    import gzip
    path.write_bytes(gzip.compress(transform(gzip.decompress(path.read_bytes()))))


@pytest.mark.parametrize('damage, message', [
    (lambda raw: (raw / 'train-labels-idx1-ubyte.gz').unlink(), 'has no train-labels-idx1-ubyte'),
    (lambda raw: corrupt(raw, 'train-images-idx3-ubyte', lambda b: b'\x00\x00\x08\x99' + b[4:]), 'magic'),
    (lambda raw: corrupt(raw, 'train-images-idx3-ubyte', lambda b: b[:-100]), 'truncated'),
    (lambda raw: (raw / 'train-images-idx3-ubyte.gz').write_bytes(
        (raw / 'train-images-idx3-ubyte.gz').read_bytes()[:500]), 'truncated'),
    (lambda raw: corrupt(raw, 'train-labels-idx1-ubyte', lambda b: b[:4] + (119).to_bytes(4, 'big') + b[8:-1]),
     '120 images but 119 labels'),
])
def test_bad_raw_dir(tmp_path, damage, message, capsys):
    raw = write_idx_dir(tmp_path / 'raw')
    damage(raw)
    code, _, err = run_main(get_mnist_data.main, ['--raw-dir', str(raw), '--output', str(tmp_path / 'o')], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / 'o').exists()


def test_missing_raw_dir(tmp_path, capsys):
    code, _, err = run_main(get_mnist_data.main, ['--raw-dir', str(tmp_path / 'nope'), '--output',
                                                  str(tmp_path / 'o')], capsys)
    assert_one_line_error(code, err, 'does not exist')


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason='../shared/data/mnist not present')
def test_shared_offline_mnist(tmp_path, capsys):
    out = tmp_path / 'mnist'
    code, _, _ = run_main(get_mnist_data.main, ['--raw-dir', str(SHARED_MNIST), '--output', str(out),
                                                '--split', 'all'], capsys)
    assert code == 0
    info = json.loads((out / 'dataset.json').read_text())
    assert info['splits'] == {'train': 5000, 'test': 10000}
    images = data.list_images(out)
    with open(out / 'labels.csv', newline='') as f:
        labels = np.array([int(row['label']) for row in csv.DictReader(f)])
    _, train_labels = datasets.read_raw_split(SHARED_MNIST, 'train')
    _, test_labels = datasets.read_raw_split(SHARED_MNIST, 'test')
    assert np.bincount(train_labels).tolist() == [500] * 10
    assert len(images) == 15000 and Image.open(images[0]).size == (28, 28)
    assert np.array_equal(np.bincount(labels), np.bincount(train_labels) + np.bincount(test_labels))
