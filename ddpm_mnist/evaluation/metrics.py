"""Offline sample-quality metrics in the feature space of the dataset's classifier (MNIST's is shipped).

FID here is the Fréchet distance between Gaussian fits of the classifier's penultimate features (not
Inception FID; numbers are comparable only with the same classifier, reference set and N).
"""
from __future__ import annotations

import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg

from ddpm_mnist.model.checkpoints import load_weights_file
from ddpm_mnist.evaluation.classifier import (WEIGHTS, as_training_resolution, classify, load_classifier,
                                              to_classifier_input)
from ddpm_mnist.evaluation.intervals import KernelToReference, bootstrap_interval, fid_interval, kid_interval
from ddpm_mnist.utils import BadValue, PathLike, UserError, file_digest

# Bump when a score is added or changed: sweep caches keyed with an older version are recomputed.
METRICS_VERSION = 4  # 3: FID with its bootstrap interval, KID; 4: IS with its interval
K_NEIGHBOURS = 3
# A sample is a near-copy when its nearest training digit is closer than this (pixel L2 on 28x28 in
# [0, 1]; RMS difference < 0.036): a copy with slight noise, not merely the same digit written alike.
NEAR_COPY_L2 = 1.0


ReferenceStats = namedtuple('ReferenceStats', 'mean cov count floors')


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of a feature set, one row per image."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(a: np.ndarray | tuple[np.ndarray, np.ndarray], b: np.ndarray | tuple[np.ndarray,
                     np.ndarray]) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (each an array, or a (mean, cov) pair)."""
    (mu_a, cov_a), (mu_b, cov_b) = (x if isinstance(x, tuple) else gaussian_fit(x) for x in (a, b))
    with warnings.catch_warnings():  # dead ReLU features make the covariances singular; harmless here
        warnings.simplefilter('ignore')
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            eps = 1e-6 * np.eye(len(cov_a))
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


def inception_score(probs: np.ndarray) -> float:
    """exp E[KL(p(y|x) || p(y))] over the images' class probabilities (Salimans et al. 2016)."""
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))


def class_balance(probs: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(share of each predicted class, the smallest share, KL of the shares from uniform)."""
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    share = counts / counts.sum()
    kl_uniform = float(np.sum(share[share > 0] * np.log(share[share > 0] * len(share))))
    return share, float(share.min()), kl_uniform


def _pairwise_min(a: np.ndarray, b: np.ndarray, k: int = 1, exclude_self: bool = False,
                  chunk: int = 2048) -> np.ndarray:
    """k-th smallest Euclidean distance from each row of a to the rows of b (chunked)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    out = []
    for start in range(0, len(a), chunk):
        d = torch.cdist(a[start:start + chunk], b)
        kth = k + 1 if exclude_self else k
        out.append(d.topk(kth, dim=1, largest=False).values[:, kth - 1])
    return torch.cat(out).numpy()


def _within_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> float:
    points, centres = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
    radii = torch.as_tensor(radii, dtype=torch.float64)
    inside = []
    for start in range(0, len(points), chunk):
        inside.append((torch.cdist(points[start:start + chunk], centres) <= radii[None]).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    real_radii = _pairwise_min(real, real, k, exclude_self=True)
    fake_radii = _pairwise_min(fake, fake, k, exclude_self=True)
    return _within_any_ball(fake, real, real_radii), _within_any_ball(real, fake, fake_radii)


def flip_preferred_share(probs: np.ndarray, flipped_probs: np.ndarray) -> float:
    """Share of images the classifier reads more confidently after a horizontal flip. A mirrored digit looks
    more like a real one once flipped back; so do a few real digits, and symmetric ones (0, 1, 8) tie, so read it
    against the sweep's calibration rows: real training digits, and the same digits mirrored."""
    return float((flipped_probs.max(1) > probs.max(1)).mean())


def nearest_train_distance(images: torch.Tensor | np.ndarray, train_pixels: np.ndarray) -> np.ndarray:
    """Pixel distance (L2 on 28x28 in [0, 1], every channel) of each image to its nearest training image."""
    return _pairwise_min(to_classifier_input(images).flatten(1).numpy(), train_pixels)


def memorisation(images: torch.Tensor, train_pixels: np.ndarray) -> tuple[float, float]:
    """Median distance of the images to their nearest training digit; share of near-copies."""
    nearest = nearest_train_distance(images, train_pixels)
    return float(np.median(nearest)), float((nearest < NEAR_COPY_L2).mean())


MIN_SCORED = 2  # a covariance needs two images; FID of fewer is undefined


def check_scorable(images: Any, channels: int = 1) -> None:
    """Refuse, in one line and before any linear algebra, what the metrics cannot score: not a tensor of shape
    (N, channels, H, W), fewer than MIN_SCORED images, or values that are not finite."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != channels:
        shape = tuple(images.shape) if hasattr(images, 'shape') else type(images).__name__
        raise BadValue(f'images of shape {shape} cannot be scored: give a tensor (N, {channels}, H, W) in [0, 1]')
    if len(images) < MIN_SCORED:
        raise BadValue(f'{len(images)} image(s) cannot be scored: FID needs at least {MIN_SCORED} (about 1,000 for '
                       'numbers worth comparing)')
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise BadValue(f'{bad} of {len(images)} images hold NaN or infinite values and cannot be scored; the model '
                       'or sampler that made them is broken')


class Evaluator:
    """Scores sets of images against a reference set, with floor and ceiling calibration.

    reference: real images the samples are compared with (the dataset's test split, MNIST's by default);
    train: the images the model was trained on (for the floor and the memorisation check).
    Both are uint8 arrays as read from disk ((N, H, W) or (N, H, W, 3)); they pass through the same
    native -> image_size -> 28 resampling as the training data did, so real and generated images are treated alike.
    The classifier is the dataset's feature network (default: MNIST's).
    Without them (no MNIST on disk) give `stats` (reference.load_reference_stats()): FID, IS, confidence and class
    balance still work; precision/recall, memorisation and the data-based calibration rows are NaN or left out.
    """

    def __init__(self, reference: np.ndarray | None = None, train: np.ndarray | None = None, image_size: int = 32,
                 classifier: torch.nn.Module | None = None, seed: int = 0, stats: ReferenceStats | None = None) -> None:
        self.classifier = classifier or load_classifier()
        self.image_size, self.seed, self.stats = image_size, seed, stats
        self.reference_features = self.train = self.train_pixels = self.kernel = None
        if reference is not None:
            self.reference_features, _ = classify(self.classifier, as_training_resolution(reference, image_size))
            self.reference_fit = gaussian_fit(self.reference_features)
            self.reference_count = len(reference)
            self.kernel = KernelToReference(self.reference_features)
        elif stats is not None:
            self.reference_fit, self.reference_count = (stats.mean, stats.cov), stats.count
        else:
            raise UserError('the metrics need MNIST test digits or the shipped reference statistics')
        if train is not None:
            self.train = as_training_resolution(train, image_size)
            self.train_pixels = to_classifier_input(self.train).flatten(1).numpy()
        self.train_count = 0 if train is None else len(train)
        # what the scores depend on besides the images (sweep caches are keyed by it); hashed once, not per config
        self.channels = self.classifier.channels
        self.identity = dict(classifier=getattr(self.classifier, 'weights_digest', None), image_size=image_size,
                             seed=seed, reference=self.reference_count, train=self.train_count,
                             shipped_stats=stats is not None)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """The classifier's penultimate features of images (N, C, H, W) in [0, 1], float64 (N, 128)."""
        return classify(self.classifier, images)[0]

    def score(self, images: torch.Tensor) -> dict[str, Any]:
        """All metrics for images (N, C, H, W) in [0, 1]; NaN where the data they need is missing."""
        check_scorable(images, self.channels)
        features, probs = classify(self.classifier, images)
        _, flipped_probs = classify(self.classifier, images.flip(-1))
        n, nan = len(images), float('nan')
        precision = recall = median_nn = near_copies = nan
        if self.reference_features is not None and n > K_NEIGHBOURS:
            rng = np.random.default_rng(self.seed)
            ref_subset = self.reference_features[rng.permutation(len(self.reference_features))[:n]]
            precision, recall = precision_recall(ref_subset, features)
        if self.train_pixels is not None:
            median_nn, near_copies = memorisation(images, self.train_pixels)
        share, smallest, kl = class_balance(probs)
        fid = frechet_distance(features, self.reference_fit)
        _, fid_low, fid_high = fid_interval(features, self.reference_fit, fid, seed=self.seed) if n > 2 else (
            fid, nan, nan)
        kid = kid_low = kid_high = nan
        if self.kernel is not None and n > 2:
            kid, kid_low, kid_high = kid_interval(features, self.kernel, seed=self.seed)
        score = inception_score(probs)
        _, is_low, is_high = bootstrap_interval(lambda i: inception_score(probs[i]), n, score, seed=self.seed) if (
            n > 2) else (score, nan, nan)
        return dict(n=n, fid=fid, fid_low=fid_low, fid_high=fid_high, kid=kid, kid_low=kid_low, kid_high=kid_high,
                    inception_score=score, inception_score_low=is_low, inception_score_high=is_high,
                    confidence=float(probs.max(1).mean()), min_class_share=smallest, class_kl_uniform=kl,
                    class_shares=[round(float(s), 4) for s in share], precision=precision, recall=recall,
                    median_nn_train_l2=median_nn, near_copy_share=near_copies,
                    flip_preferred_share=flip_preferred_share(probs, flipped_probs))

    def floor_images(self, n: int) -> torch.Tensor:
        """n real training digits (all of them if fewer): the best score a perfect model could get."""
        rng = np.random.default_rng(self.seed + 1)
        return self.train[rng.permutation(len(self.train))[:n]]

    def ceiling_images(self, n: int) -> torch.Tensor:
        """n images of pure Gaussian noise, shown the way samples are (the worst case)."""
        generator = torch.Generator().manual_seed(self.seed + 2)
        noise = torch.randn(n, self.channels, self.image_size, self.image_size, generator=generator)
        return ((noise + 1) / 2).clamp(0, 1)

    def calibration(self, n: int) -> dict[str, dict[str, Any]]:
        """Scores of real training digits (the floor), the same mirrored, and pure noise (the ceiling), at n."""
        if self.train is None:  # no digits on disk: the shipped floor (if computed at this N) and the noise row
            rows = {}
            floor = (self.stats.floors.get(str(n)) if self.stats is not None and self.seed == 0 else None)
            if floor is not None:
                rows['real training digits (floor)'] = {**{k: float('nan') for k in SCORE_KEYS}, 'fid': floor, 'n': n}
            rows['pure noise (ceiling)'] = self.score(self.ceiling_images(n))
            return rows
        floor = self.floor_images(n)
        return {'real training digits (floor)': self.score(floor),
                'mirrored real digits': self.score(floor.flip(-1)),
                'pure noise (ceiling)': self.score(self.ceiling_images(n))}


SCORE_KEYS = ('fid', 'fid_low', 'fid_high', 'kid', 'kid_low', 'kid_high', 'inception_score', 'inception_score_low',
              'inception_score_high', 'confidence',
              'min_class_share', 'class_kl_uniform', 'precision', 'recall',
              'median_nn_train_l2', 'near_copy_share', 'flip_preferred_share')


def scores_from_json(row: dict[str, Any]) -> dict[str, Any]:
    """A score dict read back from the strict JSON it was saved as: the scores written as null (not measured) are
    NaN again, as the Evaluator returned them."""
    return {k: float('nan') if v is None and k in SCORE_KEYS else v for k, v in row.items()}


def classifier_digest(path: PathLike = WEIGHTS) -> str | None:
    """The classifier file's digest (what every cached score is keyed by), None if it is missing."""
    return file_digest(path) if Path(path).is_file() else None


def inception_model(weights_path: PathLike, device: str | torch.device = 'cpu') -> torch.nn.Module:
    """pytorch-fid's InceptionV3 from a locally stored weights file only (never downloads, never unpickles
    code)."""
    import pytorch_fid.inception as fid_inception

    state = load_weights_file(weights_path, 'Inception weights')  # weights_only: the file cannot run code
    # pytorch-fid fetches its weights with torch.hub's unpickler (weights_only=False); hand it ours instead.
    fetch = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    except RuntimeError as err:
        raise UserError(f'{weights_path} does not hold the pytorch-fid Inception weights ({str(err).splitlines()[0]}); '
                        'use pt_inception-2015-12-05-6726825d.pth') from None
    finally:
        fid_inception.load_state_dict_from_url = fetch
    return model


def inception_fid(images: torch.Tensor, reference: torch.Tensor, model: torch.nn.Module,
                  device: str | torch.device = 'cpu',
                  batch_size: int = 100) -> float:
    """Standard Inception FID (pytorch-fid's statistics) with a model from inception_model()."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    @torch.inference_mode()
    def activations(x: torch.Tensor) -> np.ndarray:
        x = to_classifier_input(x) if x.dtype == torch.uint8 or x.dim() == 3 else x
        out = [model(x[i:i + batch_size].to(device).repeat(1, 3, 1, 1))[0].squeeze(-1).squeeze(-1).cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy()

    a, b = activations(images), activations(reference)
    return float(calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
