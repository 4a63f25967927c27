"""The training folder the library's Trainer reads: a dataset's split written as PNGs with labels.csv and
dataset.json (what it is: dataset, channels, size, classes), checked before training. The raw files themselves
belong to datasets.py."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ddpm_mnist.datasets import dataset_entry
from ddpm_mnist.runtime import progress
from ddpm_mnist.utils import (PathLike, UserError, disk_full_message, is_disk_full, read_json, remove_stale_temporaries,
                              write_json)

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'tiff')  # what the library's Dataset globs for
MIN_TRAIN_IMAGES = 100                       # the library's Trainer asserts this
ROUGH_PNG_BYTES = 400                        # a 28x28 MNIST digit as PNG, about (for the disk-full message)
MANIFEST, INFO = 'labels.csv', 'dataset.json'


# ---------------------------------------------------------------- PNG folder

def image_name(split: str, index: int, dataset: str = 'mnist') -> str:
    """The PNG name of one image, e.g. mnist_train_00042.png."""
    return f'{dataset}_{split}_{index:05d}.png'


def folder_is_complete(folder: PathLike) -> bool:
    """A folder is complete when its dataset.json exists and the PNG count matches it."""
    folder = Path(folder)
    info_path = folder / INFO
    if not info_path.is_file():
        return False
    info = read_json(info_path)
    return sum(1 for _ in folder.glob('*.png')) == info.get('num_images')


def write_image_folder(output: PathLike, splits: dict[str, tuple[np.ndarray, np.ndarray]], source: str,
                       force: bool = False, dataset: str = 'mnist', classes: Sequence[str] | None = None) -> int:
    """Write {split: (images, labels)} of a dataset as PNGs plus labels.csv and dataset.json, atomically.
    Images are uint8 (N, H, W) for one channel or (N, H, W, 3); classes default to the dataset entry's.

    The folder is built under a hidden temporary name and renamed into place only when complete,
    so an interrupted run never leaves a folder that looks finished.
    """
    output = Path(output)
    if output.exists() and not force:
        raise UserError(f'{output} exists but is not a complete folder made by this script; '
                        'rerun with --force to rebuild it')
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output.parent)
        partial = output.parent / f'.{output.name}.partial-{os.getpid()}'
        partial.mkdir()
    except OSError as err:
        raise UserError(f'cannot write to {output.parent}: {err.strerror or err}') from None
    try:
        total = sum(len(labels) for _, labels in splits.values())
        rows = []
        with progress(total=total, desc=f'writing {output.name}', unit='img') as bar:
            for split, (images, labels) in splits.items():
                for i, (image, label) in enumerate(zip(images, labels)):
                    name = image_name(split, i, dataset)
                    Image.fromarray(image).save(partial / name)
                    rows.append((name, int(label), split, i))
                    bar.update(1)
        with open(partial / MANIFEST, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['file', 'label', 'split', 'index'])
            writer.writerows(rows)
        first = next(images for images, _ in splits.values())
        write_json(partial / INFO, {
            'num_images': total,
            'splits': {split: int(len(labels)) for split, (_, labels) in splits.items()},
            'source': source,
            'dataset': dataset,
            'channels': 1 if first.ndim == 3 else int(first.shape[-1]),
            'image_size': [int(first.shape[1]), int(first.shape[2])],
            'classes': list(classes if classes is not None else dataset_entry(dataset).classes or []) or None,
        })
        if output.exists():
            old = output.parent / f'.{output.name}.old-{os.getpid()}'
            output.rename(old)
            partial.rename(output)
            shutil.rmtree(old)
        else:
            partial.rename(output)
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, Exception) and is_disk_full(err):
            unchanged = '; the existing folder is unchanged' if output.exists() else ''
            raise UserError(f'{disk_full_message(output, needed=ROUGH_PNG_BYTES * total)}; nothing was written '
                            f'(the partial folder is removed){unchanged}') from None
        raise
    return total


def list_images(folder: PathLike) -> list[Path]:
    """Image files the library's Dataset would train on (same extensions, recursive)."""
    folder = Path(folder)
    return sorted(p for ext in IMAGE_EXTS for p in folder.glob(f'**/*.{ext}'))


def check_training_folder(folder: PathLike) -> int:
    """Return the number of training images, or raise a one-line error naming what to do."""
    folder = Path(folder)
    hint = ('create it with: python3 get_mnist_data.py (offline: --raw_dir ../shared/data/mnist-full; other data: '
            '--dataset)')
    if not folder.is_dir():
        raise UserError(f'data folder {folder} does not exist; {hint}')
    count = len(list_images(folder))
    if count == 0:
        raise UserError(f'data folder {folder} holds no images ({", ".join(IMAGE_EXTS)}); {hint}')
    if count < MIN_TRAIN_IMAGES:
        raise UserError(f'data folder {folder} holds only {count} images; at least {MIN_TRAIN_IMAGES} are needed')
    return count


def folder_info(folder: PathLike) -> dict[str, Any]:
    """What dataset.json says about a folder made by get_mnist_data.py (empty dict otherwise); folders written
    before datasets had entries are MNIST, with its ten classes (their labels.csv has the digits)."""
    path = Path(folder) / INFO
    if not path.is_file():
        return {}
    info = read_json(path)
    if 'dataset' not in info:
        info = {'dataset': 'mnist', 'channels': 1, 'classes': list(dataset_entry('mnist').classes), **info}
    return info


def labels_of(folder: PathLike, paths: Sequence[Path]) -> np.ndarray:
    """The class of each training image, from the labels.csv that get_mnist_data.py writes beside them."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f'{path} not found: a conditional model trains on labelled images; rebuild the folder with '
                        'get_mnist_data.py')
    with open(path, newline='') as f:
        labels = {row['file']: int(row['label']) for row in csv.DictReader(f)}
    missing = [p.name for p in paths if p.name not in labels]
    if missing:
        raise UserError(f'{path} has no label for {missing[0]} ({len(missing)} images unlabelled); rebuild the '
                        'folder with get_mnist_data.py --force')
    return np.array([labels[p.name] for p in paths])


def fit_to_dataset(info: dict[str, Any], *, model: dict[str, Any] | None,
                   diffusion: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's channels and classes follow the data folder's dataset (its dataset.json); a dataset whose native
    size is not MNIST's 28 trains at that size unless --image_size says otherwise."""
    model, diffusion = dict(model or {}), dict(diffusion or {})
    if not info:  # a folder of images not made by get_mnist_data.py: the preset and the flags decide
        return model, diffusion
    channels, name = info['channels'], info['dataset']
    if model.get('channels', channels) != channels:
        raise UserError(f'--channels {model["channels"]} does not fit the data folder: its {name} images have '
                        f'{channels} channel(s); drop --channels')
    model['channels'] = channels
    if model.get('num_classes'):
        if not info.get('classes'):
            raise UserError('a conditional model trains on labelled images, but this data folder has no classes; put '
                            'the images in one subfolder per class and rebuild it with get_mnist_data.py')
        model['num_classes'] = len(info['classes'])
    side = (info.get('image_size') or [28])[0]
    if side != 28 and 'image_size' not in diffusion:
        diffusion['image_size'] = side
    return model, diffusion
