"""MNIST as IDX files, as torchvision downloads, and as the PNG folder the library's Trainer reads."""
from __future__ import annotations

import csv
import gzip
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ddpm_mnist.hints import PathLike
from ddpm_mnist.utils import UserError, disk_full_message, is_disk_full, read_json, remove_stale_temporaries, write_json

IDX_NAMES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'tiff')  # what the library's Dataset globs for
MIN_TRAIN_IMAGES = 100                       # the library's Trainer asserts this
ROUGH_PNG_BYTES = 400                        # a 28x28 MNIST digit as PNG, about (for the disk-full message)
MANIFEST, INFO = 'labels.csv', 'dataset.json'
DOWNLOAD_HELP = ('download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
                 't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from an MNIST mirror on a machine with '
                 'internet, copy them into a folder, and rerun with --raw_dir FOLDER')


# ---------------------------------------------------------------- IDX files

def _find_idx(raw_dir: PathLike, name: str) -> Path:
    for candidate in (raw_dir / name, raw_dir / f'{name}.gz'):
        if candidate.is_file():
            return candidate
    raise UserError(f'{raw_dir} has no {name} or {name}.gz; {DOWNLOAD_HELP}')


def read_idx(path: PathLike, magic: int) -> np.ndarray:
    """Read one IDX file (optionally gzipped), check its structure and return a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f'{path} is damaged or truncated ({err}); download it again') from None
    ndim = {IMAGE_MAGIC: 3, LABEL_MAGIC: 1}[magic]
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise UserError(f'{path} is truncated: {len(raw)} bytes is shorter than the IDX header')
    found = int.from_bytes(raw[:4], 'big')
    if found != magic:
        raise UserError(f'{path} is not an MNIST IDX {"image" if ndim == 3 else "label"} file '
                        f'(magic 0x{found:08x}, expected 0x{magic:08x})')
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise UserError(f'{path} holds {dims[1]}x{dims[2]} images; MNIST images are 28x28')
    expected = int(np.prod(dims))
    body = raw[header_len:]
    if len(body) != expected:
        kind = 'truncated' if len(body) < expected else 'longer than its header says'
        raise UserError(f'{path} is {kind}: header promises {expected} bytes of data, file has {len(body)}; '
                        'download it again')
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_raw_split(raw_dir: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of one split from a folder of IDX files; N comes from the header."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(f'raw folder {raw_dir} does not exist; {DOWNLOAD_HELP}')
    image_name, label_name = IDX_NAMES[split]
    images = read_idx(_find_idx(raw_dir, image_name), IMAGE_MAGIC)
    labels = read_idx(_find_idx(raw_dir, label_name), LABEL_MAGIC)
    if len(images) != len(labels):
        raise UserError(f'{raw_dir}: {split} split has {len(images)} images but {len(labels)} labels; '
                        'the files do not belong together')
    if labels.size and labels.max() > 9:
        raise UserError(f'{raw_dir}: {split} labels contain {labels.max()}; MNIST labels are 0-9')
    return images, labels


def download_split(root: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fetch one split through torchvision (official mirrors, official MD5 checksums)."""
    from torchvision.datasets import MNIST  # here: torchvision's import is slow, and --help must stay instant
    made = [p for p in (Path(root), Path(root) / 'MNIST', Path(root) / 'MNIST' / 'raw') if not p.exists()]
    try:
        ds = MNIST(root=str(root), train=(split == 'train'), download=True)
    except (RuntimeError, OSError) as err:
        for folder in reversed(made):  # a failed download leaves no empty cache folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        cause = ' '.join(line.strip() for line in str(err).splitlines() if line.strip())[:300] or type(err).__name__
        raise UserError(f'could not download MNIST ({cause}); no internet? Then {DOWNLOAD_HELP}') from None
    return ds.data.numpy(), ds.targets.numpy().astype(np.uint8)


# ---------------------------------------------------------------- PNG folder

def image_name(split: str, index: int) -> str:
    """The PNG name of one digit, e.g. mnist_train_00042.png."""
    return f'mnist_{split}_{index:05d}.png'


def folder_is_complete(folder: PathLike) -> bool:
    """A folder is complete when its dataset.json exists and the PNG count matches it."""
    folder = Path(folder)
    info_path = folder / INFO
    if not info_path.is_file():
        return False
    info = read_json(info_path)
    return sum(1 for _ in folder.glob('*.png')) == info.get('num_images')


def write_image_folder(output: PathLike, splits: dict[str, tuple[np.ndarray, np.ndarray]], source: str,
                       force: bool = False) -> int:
    """Write {split: (images, labels)} as PNGs plus labels.csv and dataset.json, atomically.

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
        with tqdm(total=total, desc=f'writing {output.name}', unit='img') as bar:
            for split, (images, labels) in splits.items():
                for i, (image, label) in enumerate(zip(images, labels)):
                    name = image_name(split, i)
                    Image.fromarray(image, mode='L').save(partial / name)
                    rows.append((name, int(label), split, i))
                    bar.update(1)
        with open(partial / MANIFEST, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['file', 'label', 'split', 'index'])
            writer.writerows(rows)
        write_json(partial / INFO, {
            'num_images': total,
            'splits': {split: int(len(labels)) for split, (_, labels) in splits.items()},
            'source': source,
            'image_size': [28, 28],
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
    hint = 'create it with: python3 get_mnist_data.py (offline: --raw_dir ../shared/data/mnist-full)'
    if not folder.is_dir():
        raise UserError(f'data folder {folder} does not exist; {hint}')
    count = len(list_images(folder))
    if count == 0:
        raise UserError(f'data folder {folder} holds no images ({", ".join(IMAGE_EXTS)}); {hint}')
    if count < MIN_TRAIN_IMAGES:
        raise UserError(f'data folder {folder} holds only {count} images; at least {MIN_TRAIN_IMAGES} are needed')
    return count


def folder_info(folder: PathLike) -> dict[str, Any]:
    """What dataset.json says about a folder made by get_mnist_data.py (empty dict otherwise)."""
    path = Path(folder) / INFO
    return read_json(path) if path.is_file() else {}


def labels_of(folder: PathLike, paths: Sequence[Path]) -> np.ndarray:
    """The digit of each training image, from the labels.csv that get_mnist_data.py writes beside them."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f'{path} not found: a conditional model trains on labelled digits; rebuild the folder with '
                        'get_mnist_data.py')
    with open(path, newline='') as f:
        labels = {row['file']: int(row['label']) for row in csv.DictReader(f)}
    missing = [p.name for p in paths if p.name not in labels]
    if missing:
        raise UserError(f'{path} has no label for {missing[0]} ({len(missing)} images unlabelled); rebuild the '
                        'folder with get_mnist_data.py --force')
    return np.array([labels[p.name] for p in paths])


def load_split(split: str, raw_dir: PathLike | None = None, root: PathLike = './data') -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of an MNIST split: from IDX files in raw_dir, else through torchvision (cached in root)."""
    return read_raw_split(raw_dir, split) if raw_dir else download_split(root, split)
