"""A small LeNet-style classifier per dataset (MNIST's is shipped): the feature network behind the offline metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm_mnist.utils import PathLike, UserError, atomic_path, file_digest, read_json, write_json

WEIGHTS = Path(__file__).resolve().parents[1] / 'pretrained' / 'mnist_classifier.safetensors'
FEATURE_DIM = 128
SIDE = 28  # every image reaches the classifier at 28x28 (MNIST's size; CIFAR-10's 32 is resampled)
NORMALISE = {1: (0.1307, 0.3081), 3: (0.5, 0.25)}  # (mean, std) of the input: MNIST's own for one channel


def classifier_path(dataset: str | None = None) -> Path:
    """Where a dataset's feature network lives: MNIST's is shipped, the others are written there by
    scripts/train_classifier.py --dataset NAME."""
    return WEIGHTS if dataset in (None, 'mnist') else WEIGHTS.with_name(f'{dataset}_classifier.safetensors')


class LeNet(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.channels, (self.mean, self.std) = channels, NORMALISE[channels]
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(64, 64, 3), nn.ReLU(),                              # 5x5
        )
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64 * 5 * 5, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) for images in [0, 1], shape (N, channels, 28, 28)."""
        f = self.features(self.conv((x - self.mean) / self.std))
        return f, self.head(f)


class WideNet(nn.Module):
    """The second feature network (another architecture, trained with another seed): batch-normalised convolutions
    and global average pooling, so that a ranking the two feature spaces agree on is not an accident of one."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.channels, (self.mean, self.std) = channels, NORMALISE[channels]

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.conv = nn.Sequential(*block(channels, 48), *block(48, 48), nn.MaxPool2d(2),       # 14x14
                                  *block(48, 96), *block(96, 96), nn.MaxPool2d(2),      # 7x7
                                  *block(96, FEATURE_DIM), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURE_DIM, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.conv((x - self.mean) / self.std)
        return f, self.head(f)


ARCHITECTURES = {'lenet': LeNet, 'wide': WideNet}
SECOND_WEIGHTS = WEIGHTS.with_name('mnist_classifier_wide.safetensors')


def as_float_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) as read from disk, or float (N, C, H, W) in [0, 1] -> float (N, C, H, W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images))
    if images.dtype == torch.uint8:
        images = images.float() / 255
        images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    elif images.dim() == 3:
        images = images[:, None]
    return images


def resized(images: torch.Tensor, side: int) -> torch.Tensor:
    if images.shape[-1] == side:
        return images
    return F.interpolate(images, size=(side, side), mode='bilinear', antialias=True, align_corners=False)


def to_classifier_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any image batch (see as_float_images) -> float (N, C, 28, 28) in [0, 1], what the classifier reads."""
    return resized(as_float_images(images), SIDE).clamp(0, 1)


def as_training_resolution(images: torch.Tensor | np.ndarray, size: int = 32) -> torch.Tensor:
    """Real images resized as the library's Dataset does for training, so real and generated images reach the
    classifier through the same native -> size -> 28 resampling."""
    x = as_float_images(images).clamp(0, 1)
    return F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False)


def load_classifier(path: PathLike = WEIGHTS) -> nn.Module:
    """A feature network from its safetensors (architecture from the .json beside it), in eval mode."""
    path = Path(path)
    if not path.is_file():
        dataset = 'mnist' if path == WEIGHTS else path.stem.replace('_classifier', '')
        raise UserError(f'classifier weights {path} missing; train them with: python3 scripts/train_classifier.py '
                        f'--dataset {dataset} --raw_dir FOLDER')
    info = read_json(path.with_suffix('.json')) if path.with_suffix('.json').is_file() else {}
    model = ARCHITECTURES[info.get('arch', 'lenet')](info.get('channels', 1), info.get('classes', 10))
    model.load_state_dict(load_file(str(path)))
    model.weights_digest = file_digest(path)  # what scores made with it are keyed by
    return model.eval()


@torch.inference_mode()
def classify(model: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray,
             np.ndarray]:
    """(features (N, 128), probabilities (N, classes)) as float64 numpy arrays."""
    x = to_classifier_input(images)
    feats, probs = [], []
    for start in range(0, len(x), batch_size):
        f, logits = model(x[start:start + batch_size])
        feats.append(f.double())
        probs.append(logits.double().softmax(-1))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def train_classifier(images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray, epochs: int = 12,
                     seed: int = 0, batch_size: int = 128, lr: float = 2e-3, arch: str = 'lenet') -> nn.Module:
    """Train a feature network (LeNet, or the second one: 'wide') with small random shifts and rotations;
    deterministic for a given seed on the CPU. Its channels are the images'."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = to_classifier_input(images), torch.as_tensor(labels, dtype=torch.long)
    if int(y.max()) < 1:
        raise UserError('the feature network learns from labels and these images have one class; put them in one '
                        'subfolder per class')
    model = ARCHITECTURES[arch](x.shape[1], int(y.max()) + 1).train()  # channels and classes: the data's
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(images) // batch_size))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(augment(x[idx], generator))[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine: up to 10 degrees, 2 px shift, 10% scale. Never flips (digits are not symmetric; the same
    augmentation serves every dataset, so one classifier recipe scores them all)."""
    n = len(x)
    angle = (torch.rand(n, generator=generator) - 0.5) * 2 * np.deg2rad(10)
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 2 * (2 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def accuracy(model: nn.Module, images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Share of images whose most probable class is their label."""
    _, probs = classify(model, images)
    return float((probs.argmax(1) == np.asarray(labels)).mean())


def save_classifier(model: nn.Module, path: PathLike, info: dict[str, Any]) -> None:
    """Weights as safetensors and `info` (architecture, seed, accuracy; the channels added) as the .json beside
    them."""
    path, info = Path(path), {**info, 'channels': model.channels, 'classes': model.head.out_features}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(path.with_suffix('.json'), info)

