"""Every dataset the project trains and scores on, one entry each: its name, channels, native size, classes, how its
raw files are read (IDX, the CIFAR binary records, a folder of images) and where they are downloaded from."""
from __future__ import annotations

import gzip
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ddpm_mnist.utils import BadValue, PathLike, UserError

Split = tuple[np.ndarray, np.ndarray]  # images uint8 (N, H, W) or (N, H, W, 3), labels uint8 (N,)
IDX_NAMES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'  # the binary records, never the pickles
CIFAR_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530'
CIFAR_FOLDER = 'cifar-10-batches-bin'
CIFAR_FILES = {'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)), 'test': ('test_batch.bin',)}
CIFAR_RECORD = 1 + 32 * 32 * 3  # a label byte, then 1024 red, 1024 green, 1024 blue bytes
FOLDER_TEST_EVERY = 10          # an image folder's test split: every 10th image (sorted by path); the rest trains
FOLDER_EXTS = ('png', 'jpg', 'jpeg', 'bmp', 'gif', 'tif', 'tiff', 'webp')


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset. channels, image_size and classes of an image folder come from its files (None here)."""
    name: str
    title: str                                      # as people write it: MNIST, Fashion-MNIST, CIFAR-10
    channels: int | None
    image_size: int | None
    classes: tuple[str, ...] | None
    read: Callable[..., Split]                      # read(entry, raw_dir, split, image_size) -> (images, labels)
    download: Callable[..., Split] | None           # download(entry, root, split) -> (images, labels)
    download_help: str

    @property
    def mode(self) -> str:
        """The PIL mode its images are written and read in."""
        return 'L' if self.channels == 1 else 'RGB'


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def find_file(raw_dir: Path, name: str, entry: DatasetEntry) -> Path:
    for candidate in (raw_dir / name, raw_dir / f'{name}.gz'):
        if candidate.is_file():
            return candidate
    raise UserError(f'{raw_dir} has no {name} or {name}.gz; {entry.download_help}')


def read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise UserError(f'{path} is damaged or truncated ({err}); download it again') from None


def read_idx(path: PathLike, magic: int, side: int = 28) -> np.ndarray:
    """Read one IDX file (optionally gzipped), check its structure and return a uint8 array."""
    path = Path(path)
    raw = read_bytes(path)
    ndim = {IMAGE_MAGIC: 3, LABEL_MAGIC: 1}[magic]
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise UserError(f'{path} is truncated: {len(raw)} bytes is shorter than the IDX header')
    found = int.from_bytes(raw[:4], 'big')
    if found != magic:
        raise UserError(f'{path} is not an IDX {"image" if ndim == 3 else "label"} file '
                        f'(magic 0x{found:08x}, expected 0x{magic:08x})')
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    if ndim == 3 and dims[1:] != [side, side]:
        raise UserError(f'{path} holds {dims[1]}x{dims[2]} images; this dataset\'s images are {side}x{side}')
    expected = int(np.prod(dims))
    body = raw[header_len:]
    if len(body) != expected:
        kind = 'truncated' if len(body) < expected else 'longer than its header says'
        raise UserError(f'{path} is {kind}: header promises {expected} bytes of data, file has {len(body)}; '
                        'download it again')
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_idx_split(entry: DatasetEntry, raw_dir: Path, split: str, image_size: int | None = None) -> Split:
    image_name, label_name = IDX_NAMES[split]
    images = read_idx(find_file(raw_dir, image_name, entry), IMAGE_MAGIC, entry.image_size)
    labels = read_idx(find_file(raw_dir, label_name, entry), LABEL_MAGIC)
    return images, labels


def download_torchvision(entry: DatasetEntry, root: PathLike, split: str) -> Split:
    """Fetch one split through torchvision (official mirrors, official MD5 checksums)."""
    import torchvision.datasets  # here: torchvision's import is slow, and --help must stay instant
    kind = {'mnist': 'MNIST', 'fashion_mnist': 'FashionMNIST'}[entry.name]
    made = [p for p in (Path(root), Path(root) / kind, Path(root) / kind / 'raw') if not p.exists()]
    try:
        ds = getattr(torchvision.datasets, kind)(root=str(root), train=(split == 'train'), download=True)
    except (RuntimeError, OSError) as err:
        remove_empty(made)
        raise download_error(entry, err) from None
    return ds.data.numpy(), ds.targets.numpy().astype(np.uint8)


def remove_empty(folders: list[Path]) -> None:
    """A failed download leaves no empty cache folders behind."""
    for folder in reversed(folders):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def download_error(entry: DatasetEntry, err: BaseException) -> UserError:
    cause = ' '.join(line.strip() for line in str(err).splitlines() if line.strip())[:300] or type(err).__name__
    return UserError(f'could not download {entry.title} ({cause}); no internet? Then {entry.download_help}')


# ---------------------------------------------------------------- CIFAR-10 binary records

def cifar_records(raw: bytes, where: str) -> Split:
    """(images (N, 32, 32, 3), labels) from CIFAR-10 binary records: a label byte, then the red, green and blue
    32x32 planes."""
    if not raw or len(raw) % CIFAR_RECORD:
        raise UserError(f'{where} is truncated or not a CIFAR-10 binary batch: {len(raw)} bytes is not a whole number '
                        f'of {CIFAR_RECORD}-byte records; download it again')
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes -> (H, W, C)
    return np.ascontiguousarray(images), records[:, 0].copy()


def read_cifar_split(entry: DatasetEntry, raw_dir: Path, split: str, image_size: int | None = None) -> Split:
    """The batches of one split from raw_dir (or its cifar-10-batches-bin/), or straight from the archive there."""
    archive = raw_dir / Path(CIFAR_URL).name
    folder = raw_dir / CIFAR_FOLDER if (raw_dir / CIFAR_FOLDER).is_dir() else raw_dir
    if not (folder / CIFAR_FILES[split][0]).is_file() and archive.is_file():
        return read_cifar_archive(archive, split)
    parts = [cifar_records(read_bytes(find_file(folder, name, entry)), str(folder / name))
             for name in CIFAR_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_cifar_archive(archive: Path, split: str) -> Split:
    """The split's batches read from cifar-10-binary.tar.gz itself: nothing is extracted to disk."""
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            parts = [cifar_records(tar.extractfile(f'{CIFAR_FOLDER}/{name}').read(), f'{archive}:{name}')
                     for name in CIFAR_FILES[split]]
    except (tarfile.TarError, KeyError, OSError, EOFError, AttributeError) as err:
        raise UserError(f'{archive} is damaged or not the CIFAR-10 binary archive ({err}); download it again'
                        ) from None
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def download_cifar(entry: DatasetEntry, root: PathLike, split: str) -> Split:
    """The official binary archive (MD5-checked by torchvision's downloader), read without extracting it."""
    from torchvision.datasets.utils import check_integrity, download_url
    root = Path(root)
    archive = root / Path(CIFAR_URL).name
    made = [root] if not root.exists() else []
    if not check_integrity(str(archive), CIFAR_MD5):
        try:
            download_url(CIFAR_URL, str(root), md5=CIFAR_MD5)
        except (RuntimeError, OSError) as err:
            remove_empty(made)
            raise download_error(entry, err) from None
    return read_cifar_archive(archive, split)


# ---------------------------------------------------------------- any folder of images

def folder_images(raw_dir: Path) -> list[Path]:
    return sorted(p for p in raw_dir.rglob('*') if p.is_file() and p.suffix.lower().lstrip('.') in FOLDER_EXTS)


def folder_classes(raw_dir: PathLike) -> tuple[str, ...] | None:
    """Class names of an image folder: its subfolders when every image sits in one (torchvision's ImageFolder
    convention), else None (unlabelled)."""
    raw_dir = Path(raw_dir)
    paths = folder_images(raw_dir)
    tops = {p.relative_to(raw_dir).parts[0] for p in paths if len(p.relative_to(raw_dir).parts) > 1}
    loose = any(len(p.relative_to(raw_dir).parts) == 1 for p in paths)
    return None if loose or not tops else tuple(sorted(tops))


def folder_channels(paths: list[Path]) -> int:
    """1 when every image is grayscale (or colour with equal channels), else 3."""
    from ddpm_mnist.sampling.images import as_seen, open_image
    for path in paths:
        pixels = np.asarray(as_seen(open_image(path, 'training image'), 'RGB')[0])
        if not (pixels[..., 0] == pixels[..., 1]).all() or not (pixels[..., 1] == pixels[..., 2]).all():
            return 3
    return 1


def read_folder_split(entry: DatasetEntry, raw_dir: Path, split: str, image_size: int | None = None) -> Split:
    """Every image read safely and centre-cropped to a square of image_size (default 32); the test split is every
    FOLDER_TEST_EVERY-th image, the training split the rest."""
    from ddpm_mnist.sampling.images import open_image, to_model_input
    paths = folder_images(raw_dir)
    if not paths:
        raise UserError(f'{raw_dir} holds no images ({", ".join(FOLDER_EXTS)}); point --raw_dir at a folder of images')
    classes = folder_classes(raw_dir)
    channels = folder_channels(paths)
    chosen = [p for i, p in enumerate(paths) if (i % FOLDER_TEST_EVERY == 0) == (split == 'test')]
    size = image_size or 32
    images = np.stack([(to_model_input(open_image(p, 'training image'), size, channels) * 255).round().byte()
                       .permute(1, 2, 0).numpy() for p in chosen])
    labels = np.array([classes.index(p.relative_to(raw_dir).parts[0]) if classes else 0 for p in chosen], np.uint8)
    return (images[..., 0] if channels == 1 else images), labels


def no_download(entry: DatasetEntry, root: PathLike, split: str) -> Split:
    raise UserError(f'an image folder has nothing to download; {entry.download_help}')


# ---------------------------------------------------------------- the entries

def idx_help(name: str, where: str) -> str:
    return (f'download the four {name} IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
            f't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from {where} on a machine with internet, copy '
            'them into a folder, and rerun with --raw_dir FOLDER')


DATASETS = {
    'mnist': DatasetEntry('mnist', 'MNIST', 1, 28, tuple('0123456789'), read_idx_split, download_torchvision,
                          idx_help('MNIST', 'an MNIST mirror')),
    'fashion_mnist': DatasetEntry(
        'fashion_mnist', 'Fashion-MNIST', 1, 28,
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
        read_idx_split, download_torchvision, idx_help('Fashion-MNIST', 'github.com/zalandoresearch/fashion-mnist')),
    'cifar10': DatasetEntry(
        'cifar10', 'CIFAR-10', 3, 32,
        ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'),
        read_cifar_split, download_cifar,
        f'download {CIFAR_URL} (the binary version) on a machine with internet, copy it (or its {CIFAR_FOLDER}/ '
        'folder) into a folder, and rerun with --raw_dir FOLDER'),
    'folder': DatasetEntry('folder', 'an image folder', None, None, None, read_folder_split, no_download,
                           'give --raw_dir FOLDER: a folder of images, one subfolder per class for labels'),
}
DOWNLOAD_HELP = DATASETS['mnist'].download_help


def dataset_entry(name: str | None) -> DatasetEntry:
    """The entry of a dataset by name (None: MNIST, the default), or a one-line error listing the names."""
    name = name or 'mnist'
    if name not in DATASETS:
        raise BadValue(f'unknown dataset {name!r}; choose one of: {", ".join(DATASETS)}')
    return DATASETS[name]


def read_raw_split(raw_dir: PathLike, split: str, dataset: str | None = None, image_size: int | None = None) -> Split:
    """Images and labels of one split from the dataset's raw files in raw_dir; N comes from the files."""
    entry, raw_dir = dataset_entry(dataset), Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(f'raw folder {raw_dir} does not exist; {entry.download_help}')
    images, labels = entry.read(entry, raw_dir, split, image_size)
    if len(images) != len(labels):
        raise UserError(f'{raw_dir}: {split} split has {len(images)} images but {len(labels)} labels; '
                        'the files do not belong together')
    classes = entry.classes or folder_classes(raw_dir) or ('',)
    if labels.size and labels.max() >= len(classes):
        raise UserError(f'{raw_dir}: {split} labels contain {labels.max()}; {entry.title} labels are '
                        f'0-{len(classes) - 1}')
    return images, labels


def load_split(split: str, raw_dir: PathLike | None = None, root: PathLike = './data', dataset: str | None = None,
               image_size: int | None = None) -> Split:
    """(images, labels) of a split: from the raw files in raw_dir, else downloaded (cached in root)."""
    if raw_dir:
        return read_raw_split(raw_dir, split, dataset, image_size)
    entry = dataset_entry(dataset)
    return entry.download(entry, root, split)
