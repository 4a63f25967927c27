"""Every dataset entry, offline, on small files written in each real format (IDX, CIFAR-10 binary records and their
archive, a folder of RGB PNGs): written as a training folder, trained, sampled and scored by a tiny model; and
a wrong or truncated file is one clear error."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import get_mnist_data
import train_ddpm_mnist
from conftest import assert_one_line_error, run_main, train_argv, write_idx_dir
from ddpm_mnist import datasets
from ddpm_mnist.datasets import CIFAR_FILES, CIFAR_FOLDER, CIFAR_RECORD

CIFAR_PER_BATCH = 24


def cifar_batch(n, seed):
    """n CIFAR-10 binary records: a label byte, then the red, green and blue planes; the label sets the colour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    planes = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
    for plane, label in zip(planes, labels):
        plane[label % 3, 8:24, 8:24] = 200 + label
    return np.concatenate([labels[:, None], planes.reshape(n, -1)], axis=1).tobytes()


def write_cifar_dir(folder, per_batch=CIFAR_PER_BATCH, archive=False):
    """The six batch files as the binary archive holds them (cifar-10-batches-bin/), or the archive itself."""
    names = CIFAR_FILES['train'] + CIFAR_FILES['test']
    batches = {name: cifar_batch(per_batch, seed) for seed, name in enumerate(names)}
    folder.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(folder / 'cifar-10-binary.tar.gz', 'w:gz') as tar:
            for name, data in batches.items():
                info = tarfile.TarInfo(f'{CIFAR_FOLDER}/{name}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (folder / CIFAR_FOLDER).mkdir()
        for name, data in batches.items():
            (folder / CIFAR_FOLDER / name).write_bytes(data)
    return folder


def write_png_folder(folder, n=120, classes=('circle', 'square', 'stripe')):
    """n RGB PNGs of 40x36 pixels in one subfolder per class."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % len(classes)
        pixels = rng.integers(0, 50, (36, 40, 3)).astype(np.uint8)
        pixels[6:30, 8:32, label] = 220
        (folder / classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / classes[label] / f'{i:04d}.png')
    return folder


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp('raw')
    return {'fashion_mnist': write_idx_dir(root / 'fashion', n_train=120, n_test=30),
            'cifar10': write_cifar_dir(root / 'cifar'),
            'folder': write_png_folder(root / 'pngs')}


def test_cifar_records_become_the_same_pixels(tmp_path, raw, capsys):
    out = tmp_path / 'cifar'
    code, stdout, err = run_main(get_mnist_data.main, ['--dataset', 'cifar10', '--raw_dir', str(raw['cifar10']),
                                                       '--output', str(out), '--split', 'all'], capsys)
    assert code == 0, err
    assert 'wrote 144 images' in stdout  # five training batches and the test batch
    record = np.frombuffer((raw['cifar10'] / CIFAR_FOLDER / 'data_batch_2.bin').read_bytes(), np.uint8)[
        3 * CIFAR_RECORD:4 * CIFAR_RECORD]
    png = np.asarray(Image.open(out / f'cifar10_train_{CIFAR_PER_BATCH + 3:05d}.png'))
    assert png.shape == (32, 32, 3) and np.array_equal(png, record[1:].reshape(3, 32, 32).transpose(1, 2, 0))
    info = json.loads((out / 'dataset.json').read_text())
    assert info['dataset'] == 'cifar10' and info['channels'] == 3 and info['image_size'] == [32, 32]
    assert info['classes'][0] == 'airplane' and len(info['classes']) == 10
    labels = (out / 'labels.csv').read_text().splitlines()
    assert labels[1 + CIFAR_PER_BATCH + 3].split(',')[1] == str(record[0])


def test_cifar_archive_reads_like_its_folder(tmp_path, raw):
    archive = write_cifar_dir(tmp_path / 'archive', archive=True)
    from_archive = datasets.read_raw_split(archive, 'test', 'cifar10')
    from_folder = datasets.read_raw_split(raw['cifar10'], 'test', 'cifar10')
    assert all(np.array_equal(a, b) for a, b in zip(from_archive, from_folder))
    assert not (archive / CIFAR_FOLDER).exists()  # read from the archive, nothing extracted


def test_fashion_mnist_is_idx_with_its_own_names_and_classes(tmp_path, raw, capsys):
    out = tmp_path / 'fashion'
    code, _, err = run_main(get_mnist_data.main, ['--dataset', 'fashion_mnist', '--raw_dir', str(raw['fashion_mnist']),
                                                  '--output', str(out)], capsys)
    assert code == 0, err
    images, _ = datasets.read_raw_split(raw['fashion_mnist'], 'train', 'fashion_mnist')
    assert np.array_equal(np.asarray(Image.open(out / 'fashion_mnist_train_00005.png')), images[5])
    info = json.loads((out / 'dataset.json').read_text())
    assert info['classes'][-1] == 'Ankle boot' and info['channels'] == 1


def test_image_folder_splits_crops_and_labels_by_subfolder(tmp_path, raw, capsys):
    out = tmp_path / 'pngs'
    code, stdout, err = run_main(get_mnist_data.main, ['--dataset', 'folder', '--raw_dir', str(raw['folder']),
                                                       '--output', str(out), '--split', 'all'], capsys)
    assert code == 0, err
    info = json.loads((out / 'dataset.json').read_text())
    assert info['splits'] == {'train': 108, 'test': 12}  # every 10th image is the test split
    assert info['classes'] == ['circle', 'square', 'stripe'] and info['channels'] == 3
    assert Image.open(out / 'folder_train_00000.png').size == (32, 32)


@pytest.mark.parametrize('dataset', ['fashion_mnist', 'cifar10', 'folder'])
def test_train_sample_and_score_a_tiny_model(tmp_path, raw, dataset, capsys):
    from ddpm_mnist.api import load_model, sample
    from ddpm_mnist.evaluation.classifier import train_classifier
    from ddpm_mnist.evaluation.metrics import Evaluator
    folder = tmp_path / 'data'
    assert run_main(get_mnist_data.main, ['--dataset', dataset, '--raw_dir', str(raw[dataset]),
                                          '--output', str(folder)], capsys)[0] == 0
    extra = ['--conditional'] if dataset == 'folder' else []  # three classes: a conditional model of three labels
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(folder, tmp_path / 'run', extra=extra), capsys)
    assert code == 0, err
    config = json.loads((tmp_path / 'run' / 'config.json').read_text())
    channels, side = (1, 32) if dataset == 'fashion_mnist' else (3, 32)  # --preset small trains 28 px data at 32
    assert config['model']['channels'] == channels and config['diffusion']['image_size'] == side
    assert config['data']['dataset'] == dataset
    model = load_model(tmp_path / 'run')
    images = sample(model, strategy='ddim', steps=3, n=6)
    assert images.shape == (6, channels, side, side) and torch.isfinite(images).all()
    if dataset == 'folder':
        assert config['model']['num_classes'] == 3
    train, labels = datasets.load_split('train', raw[dataset], dataset=dataset)
    test, _ = datasets.load_split('test', raw[dataset], dataset=dataset)
    classifier = train_classifier(train, labels, epochs=1)
    assert classifier.channels == channels and classifier.head.out_features == (3 if dataset == 'folder' else 10)
    scores = Evaluator(test, train, image_size=side, classifier=classifier).score(images)
    assert np.isfinite(scores['fid']) and len(scores['class_shares']) == classifier.head.out_features


def write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.parent


@pytest.mark.parametrize('case, message', [
    ('truncated', 'not a whole number of 3073-byte records'),
    ('label', 'labels contain 12'),
    ('missing', 'has no test_batch.bin'),
])
def test_wrong_cifar_files_are_one_line(tmp_path, case, message, capsys):
    folder = write_cifar_dir(tmp_path / 'raw') / CIFAR_FOLDER
    if case == 'truncated':
        (folder / 'data_batch_3.bin').write_bytes((folder / 'data_batch_3.bin').read_bytes()[:-100])
    elif case == 'label':
        data = bytearray((folder / 'data_batch_1.bin').read_bytes())
        data[0] = 12
        (folder / 'data_batch_1.bin').write_bytes(bytes(data))
    else:
        (folder / 'test_batch.bin').unlink()
    code, _, err = run_main(get_mnist_data.main, ['--dataset', 'cifar10', '--raw_dir', str(tmp_path / 'raw'),
                                                  '--output', str(tmp_path / 'out'), '--split', 'all'], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / 'out').exists()


def test_damaged_cifar_archive_is_one_line(tmp_path, capsys):
    (tmp_path / 'raw').mkdir()
    (tmp_path / 'raw' / 'cifar-10-binary.tar.gz').write_bytes(b'\x1f\x8b not really gzip')
    code, _, err = run_main(get_mnist_data.main, ['--dataset', 'cifar10', '--raw_dir', str(tmp_path / 'raw'),
                                                  '--output', str(tmp_path / 'out')], capsys)
    assert_one_line_error(code, err, 'damaged or not the CIFAR-10 binary archive')


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'imagenet'], "invalid choice: 'imagenet'"),
    (['--dataset', 'folder'], '--dataset folder reads the images of --raw_dir'),
    (['--dataset', 'cifar10', '--image_size', '16'], '--image_size applies to --dataset folder only'),
])
def test_dataset_flags_are_checked(tmp_path, argv, message, capsys):
    code, _, err = run_main(get_mnist_data.main, argv + ['--output', str(tmp_path / 'out')], capsys)
    assert_one_line_error(code, err, message)


def test_folder_problems_are_one_line(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    code, _, err = run_main(get_mnist_data.main, ['--dataset', 'folder', '--raw_dir', str(empty),
                                                  '--output', str(tmp_path / 'out')], capsys)
    assert_one_line_error(code, err, 'holds no images')
    write_bytes(tmp_path / 'bad' / 'a' / 'x.png', b'not a png')
    code, _, err = run_main(get_mnist_data.main, ['--dataset', 'folder', '--raw_dir', str(tmp_path / 'bad'),
                                                  '--output', str(tmp_path / 'out')], capsys)
    assert_one_line_error(code, err, 'x.png is not an image file')


def test_training_refuses_what_the_folder_cannot_give(tmp_path, raw, capsys):
    cifar, loose = tmp_path / 'cifar', tmp_path / 'loose'
    run_main(get_mnist_data.main, ['--dataset', 'cifar10', '--raw_dir', str(raw['cifar10']), '--output', str(cifar)],
             capsys)
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(cifar, tmp_path / 'r', extra=['--channels', '1']), capsys)
    assert_one_line_error(code, err, '--channels 1 does not fit the data folder', '3 channel(s)')
    unlabelled = tmp_path / 'unlabelled'
    unlabelled.mkdir()
    for i, path in enumerate(sorted(raw['folder'].rglob('*.png'))):
        (unlabelled / f'{i:04d}.png').write_bytes(path.read_bytes())
    run_main(get_mnist_data.main, ['--dataset', 'folder', '--raw_dir', str(unlabelled), '--output', str(loose)], capsys)
    code, _, err = run_main(train_ddpm_mnist.main, train_argv(loose, tmp_path / 'r2', extra=['--conditional']), capsys)
    assert_one_line_error(code, err, 'this data folder has no classes')
    assert not (tmp_path / 'r2').exists()


@pytest.mark.parametrize('dataset, title', [('fashion_mnist', 'Fashion-MNIST'), ('cifar10', 'CIFAR-10')])
def test_offline_download_is_one_line_naming_the_dataset(tmp_path, dataset, title, monkeypatch, capsys):
    import torchvision.datasets
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise RuntimeError('Error downloading:\nName or service not known')
    monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', offline)
    monkeypatch.setattr(torchvision.datasets.utils, 'download_url', offline)
    code, _, err = run_main(get_mnist_data.main, ['--dataset', dataset, '--root', str(tmp_path / 'cache'),
                                                  '--output', str(tmp_path / 'out')], capsys)
    assert_one_line_error(code, err, f'could not download {title} (Error downloading: Name or service not known)',
                          '--raw_dir')
    assert not (tmp_path / 'cache').exists() and not (tmp_path / 'out').exists()


def test_cifar_download_reads_the_checked_archive(tmp_path, monkeypatch, capsys):
    """The download path: torchvision's downloader fetches the archive (here: copies a small one), then it is read
    without extraction."""
    import shutil

    import torchvision.datasets.utils
    source = write_cifar_dir(tmp_path / 'server', archive=True) / 'cifar-10-binary.tar.gz'

    def fake_download(url, root, md5=None):
        assert url == datasets.CIFAR_URL and md5 == datasets.CIFAR_MD5
        shutil.copy(source, f'{root}/cifar-10-binary.tar.gz')
    monkeypatch.setattr(torchvision.datasets.utils, 'download_url', fake_download)
    monkeypatch.setattr(torchvision.datasets.utils, 'check_integrity', lambda path, md5: False)
    (tmp_path / 'cache').mkdir()
    code, stdout, err = run_main(get_mnist_data.main, ['--dataset', 'cifar10', '--root', str(tmp_path / 'cache'),
                                                       '--output', str(tmp_path / 'out'), '--split', 'test'], capsys)
    assert code == 0, err
    assert f'wrote {CIFAR_PER_BATCH} images' in stdout
