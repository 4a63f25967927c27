"""The reference the metrics compare with, owned in one place: a dataset's test split (and its training images,
for the real-data floor) read from disk, or for MNIST the test split's feature statistics shipped in
ddpm_mnist/pretrained/ when no MNIST is at hand; the Evaluator built against it with the dataset's classifier; and
the floor, the FID of N real training images."""
from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ddpm_mnist.datasets import DOWNLOAD_HELP, load_split
from ddpm_mnist.evaluation.classifier import WEIGHTS, classifier_path, classify, load_classifier
from ddpm_mnist.evaluation.metrics import Evaluator, ReferenceStats, classifier_digest, frechet_distance
from ddpm_mnist.utils import PathLike, UserError, atomic_path, read_json, warn, write_json

# Statistics of the MNIST test split in the classifier's feature space, shipped beside the classifier so FID,
# IS, confidence and class balance work with no MNIST on disk (scripts/train_classifier.py writes them).
REFERENCE_STATS = WEIGHTS.with_name('mnist_test_features.safetensors')
STATS_IMAGE_SIZE = 32  # the stats are of test digits resampled 28 -> 32 -> 28, as the models are trained
STATS_IMAGE_SIZES = (32, 28)  # one file per training image size: 32 px (the original's) and MNIST's native 28


def stats_path_for(image_size: int, path: PathLike = REFERENCE_STATS) -> Path:
    """mnist_test_features.safetensors for 32 px (the original name), mnist_test_features_28px.* for 28 px."""
    path = Path(path)
    return path if image_size == STATS_IMAGE_SIZE else path.with_name(f'{path.stem}_{image_size}px{path.suffix}')


FLOOR_SIZES = (36, 100, 300, 500, 1000, 2000)


ReferenceEvaluator = namedtuple('ReferenceEvaluator', 'evaluator reference')


def reference_evaluator(*, image_size: int, raw_dir: PathLike | None = None, data_root: PathLike = './data',
                        seed: int = 0, dataset: str | None = None) -> ReferenceEvaluator:
    """An Evaluator against the dataset's test split (ReferenceEvaluator(evaluator, test images); MNIST by
    default). With no folder named and no MNIST found, against the shipped test-split statistics (reference None);
    a folder the user named that does not hold the dataset is an error, not a reason to fall back."""
    try:
        return dataset_evaluator(image_size=image_size, raw_dir=raw_dir, data_root=data_root, seed=seed,
                                 dataset=dataset)
    except UserError as err:
        mnist = dataset in (None, 'mnist')
        stats = load_reference_stats(image_size=image_size) if mnist and raw_dir is None else None
        if stats is None:
            raise
        warn(f'MNIST not found ({str(err).split(";")[0]}): FID, IS, confidence and class balance use the shipped '
             'test-split statistics; precision/recall, near-copies and most calibration rows need the digits and '
             f'are skipped. To get MNIST: {DOWNLOAD_HELP}')
        return ReferenceEvaluator(Evaluator(image_size=image_size, seed=seed, stats=stats), None)


def write_reference_stats(classifier: torch.nn.Module, reference: np.ndarray, train: np.ndarray,
                          path: PathLike = REFERENCE_STATS,
                          sizes: Sequence[int] = FLOOR_SIZES, image_size: int = STATS_IMAGE_SIZE) -> dict[str, float]:
    """Save the test split's feature statistics and the real-data floor FID at each N in `sizes` (seed 0), for
    models trained at `image_size` (the file named by stats_path_for)."""
    evaluator = Evaluator(reference, train, image_size=image_size, classifier=classifier, seed=0)
    mean, cov = evaluator.reference_fit
    floors = {str(n): frechet_distance(classify(classifier, evaluator.floor_images(n))[0], evaluator.reference_fit)
              for n in sizes}
    path = stats_path_for(image_size, path)
    with atomic_path(path) as tmp:
        save_file({'mean': torch.from_numpy(mean), 'cov': torch.from_numpy(cov)}, str(tmp))
    write_json(path.with_suffix('.json'), dict(reference='MNIST test split', count=len(reference),
                                               image_size=image_size, classifier_sha256_16=classifier_digest(),
                                               floor_fid_by_n=floors, floor_from=f'{len(train)} training digits'))
    return floors


def load_reference_stats(path: PathLike = REFERENCE_STATS, image_size: int = STATS_IMAGE_SIZE) -> ReferenceStats | None:
    """The shipped statistics, or None (with a one-line warning) if missing or made for another classifier."""
    path = stats_path_for(image_size, path)
    if not path.is_file():
        return None
    info = read_json(path.with_suffix('.json'))
    if info.get('classifier_sha256_16') != classifier_digest() or info.get('image_size') != image_size:
        warn(f'{path} was made for another classifier or image size; ignoring it')
        return None
    tensors = load_file(str(path))
    return ReferenceStats(tensors['mean'].numpy(), tensors['cov'].numpy(), info['count'], info['floor_fid_by_n'])


def dataset_evaluator(*, image_size: int, raw_dir: PathLike | None = None, data_root: PathLike = './data',
                      seed: int = 0, dataset: str | None = None) -> ReferenceEvaluator:
    """ReferenceEvaluator(an Evaluator against the dataset's test split with its training images beside it, the
    test images), scored by that dataset's classifier (MNIST's by default). The data must be at hand."""
    reference, _ = load_split('test', raw_dir, data_root, dataset)
    train, _ = load_split('train', raw_dir, data_root, dataset)
    evaluator = Evaluator(reference, train, image_size=image_size, seed=seed,
                          classifier=load_classifier(classifier_path(dataset)))
    return ReferenceEvaluator(evaluator, reference)


def digits_evaluator(*, image_size: int, raw_dir: PathLike | None = None, data_root: PathLike = './data',
                     seed: int = 0, dataset: str | None = None) -> Evaluator:
    """The Evaluator of dataset_evaluator (the floor, near-copies): what the export gate, the training curve and the
    report scripts score with."""
    return dataset_evaluator(image_size=image_size, raw_dir=raw_dir, data_root=data_root, seed=seed,
                             dataset=dataset).evaluator


def floor_fid(evaluator: Evaluator, n: int) -> float:
    """The real-data floor: FID of n real training digits (the evaluator's seed picks them), at its image size."""
    return evaluator.score(evaluator.floor_images(n))['fid']
