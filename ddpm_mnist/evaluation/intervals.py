"""95 % intervals for the scores: bootstrap over the generated samples, the reference statistics held fixed.

Every configuration of a sweep starts image i from the same x_T, so two configurations can be compared image by
image: the paired bootstrap resamples the same sample indices in both and reports the interval of the difference,
much tighter than two separate intervals.

A resample repeats images, which inflates FID and KID the way a smaller N would; each interval is therefore moved
by the bootstrap's own bias (the mean of the resampled values minus the estimate), so it keeps the bootstrap's
spread around the estimate. docs/metrics.md checks how often such an interval covers a fresh draw.
"""
from __future__ import annotations

import warnings
from collections import namedtuple
from typing import Any, Callable, Sequence

import numpy as np
from scipy import linalg

RESAMPLES = 200
Interval = namedtuple('Interval', 'value low high')


def resample_indices(n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) indices drawn with replacement; the same seed gives the same draws for every configuration."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def shifted_interval(value: float, draws: Sequence[float] | np.ndarray) -> Interval:
    """The 2.5 and 97.5 % points of the bootstrap draws, moved so that their mean sits on the estimate."""
    draws = np.asarray(draws, dtype=float)
    low, high = np.percentile(draws - (draws.mean() - value), [2.5, 97.5])
    return Interval(float(value), float(low), float(high))


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, value: float, *,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Interval(value, low, high) of statistic(sample indices) over resamples of n samples, e.g. the Inception
    Score of the resampled images' class probabilities."""
    return shifted_interval(value, [statistic(i) for i in resample_indices(n, resamples=resamples, seed=seed)])


def proportion_interval(share: float, n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Interval of a share of n items (e.g. the label agreement of n digits), bootstrapped like the other scores:
    the mean of round(share * n) ones among n, resampled (the mean of a resample depends on nothing else)."""
    hits = np.zeros(n)
    hits[:round(share * n)] = 1.0
    return bootstrap_interval(lambda i: float(hits[i].mean()), n, share, resamples=resamples, seed=seed)


def error_bars(rows: Sequence[dict[str, Any]], key: str = 'fid') -> list[list[float]]:
    """matplotlib's yerr for rows with KEY, KEY_low and KEY_high: the distances to the interval's ends (0 where
    a row has no interval)."""
    def gap(row: dict[str, Any], end: str) -> float:
        bound = row.get(f'{key}_{end}')
        if bound is None or not np.isfinite(bound):
            return 0.0
        return max(0.0, float(row[key] - bound if end == 'low' else bound - row[key]))
    return [[gap(r, 'low') for r in rows], [gap(r, 'high') for r in rows]]


def number_cell(value: float | None, digits: int = 3) -> str:
    """A table cell: the number, or '–' where it was not measured (None or NaN)."""
    return f'{value:.{digits}f}' if value is not None and np.isfinite(value) else '–'


def interval_cell(r: dict[str, Any], key: str) -> str:
    """'value [low, high]', the value alone where there is no interval, '–' where there is no value."""
    value, low, high = (r.get(k) for k in (key, f'{key}_low', f'{key}_high'))
    known = all(x is not None and np.isfinite(x) for x in (low, high))
    return f'{value:.2f} [{low:.2f}, {high:.2f}]' if known and np.isfinite(value) else number_cell(value, 2)


class FrechetToReference:
    """FID of feature sets against one fixed reference Gaussian, fast enough to bootstrap: with R = sqrt(C_r)
    computed once, tr sqrt(C_g C_r) = sum sqrt(eig(R C_g R)) (an eigvalsh per set instead of a sqrtm)."""

    def __init__(self, reference_fit: tuple[np.ndarray, np.ndarray]) -> None:
        self.mean, self.cov = reference_fit
        with warnings.catch_warnings():  # dead ReLU features make the covariance singular; harmless here
            warnings.simplefilter('ignore')
            self.root = np.real(linalg.sqrtm(self.cov))
        self.trace = float(np.trace(self.cov))

    def __call__(self, features: np.ndarray) -> float:
        mean, cov = features.mean(0), np.cov(features, rowvar=False)
        eigenvalues = np.linalg.eigvalsh(self.root @ cov @ self.root)
        trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
        return float(((mean - self.mean) ** 2).sum() + np.trace(cov) + self.trace - 2 * trace_sqrt)


def fid_interval(features: np.ndarray, reference_fit: tuple[np.ndarray, np.ndarray], fid: float, *,
                 resamples: int = RESAMPLES,
                 seed: int = 0) -> Interval:
    """Interval(fid, low, high) over resamples of the generated features (low clipped at 0)."""
    distance = FrechetToReference(reference_fit)
    value = shifted_interval(fid, [distance(features[i]) for i in resample_indices(len(features), resamples=resamples,
                                                                                     seed=seed)])
    return value._replace(low=max(0.0, value.low))


def paired_fid_difference(features_a: np.ndarray, features_b: np.ndarray, reference_fit: tuple[np.ndarray,
                          np.ndarray], *,
                          resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """FID(a) - FID(b) with its interval, resampling the same sample indices in both (a and b from the same x_T)."""
    if len(features_a) != len(features_b):
        raise ValueError('a paired comparison needs the same number of samples in both configurations')
    distance = FrechetToReference(reference_fit)
    draws = [distance(features_a[i]) - distance(features_b[i])
             for i in resample_indices(len(features_a), resamples=resamples, seed=seed)]
    return shifted_interval(distance(features_a) - distance(features_b), draws)


def differs(interval: Interval) -> bool:
    """Whether an interval of a difference excludes 0."""
    return interval.low > 0 or interval.high < 0


# ---------------------------------------------------------------- KID (Binkowski et al. 2018), unbiased at small N

def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1) ** 3  # k(x, y) = (x.y / d + 1)^3, the KID paper's kernel


class KernelToReference:
    """Unbiased squared MMD of feature sets against one fixed reference set; the reference-reference term is
    computed once (in chunks, never the whole M x M matrix)."""

    def __init__(self, reference_features: np.ndarray, chunk: int = 2048) -> None:
        self.reference = np.asarray(reference_features, dtype=np.float64)
        m = len(self.reference)
        total = sum(polynomial_kernel(self.reference[s:s + chunk], self.reference).sum() for s in range(0, m, chunk))
        diagonal = ((self.reference ** 2).sum(1) / self.reference.shape[1] + 1) ** 3
        self.reference_term = float((total - diagonal.sum()) / (m * (m - 1)))

    def kernels(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What every resample reuses: the generated-generated kernel matrix, and each generated sample's mean
        kernel value against the reference set."""
        features = np.asarray(features, dtype=np.float64)
        return polynomial_kernel(features, features), polynomial_kernel(features, self.reference).mean(1)

    def mmd(self, k_gg: np.ndarray, cross_means: np.ndarray, index: np.ndarray | None = None) -> float:
        """Unbiased squared MMD from the precomputed kernels, over the samples `index` (default: all)."""
        if index is not None:
            k_gg, cross_means = k_gg[np.ix_(index, index)], cross_means[index]
        n = len(k_gg)
        within = (k_gg.sum() - np.trace(k_gg)) / (n * (n - 1))
        return float(within + self.reference_term - 2 * cross_means.mean())

    def __call__(self, features: np.ndarray) -> float:
        return self.mmd(*self.kernels(features))


def kid_interval(features: np.ndarray, kernel_to_reference: KernelToReference, *, resamples: int = RESAMPLES,
                 seed: int = 0) -> Interval:
    """Interval(kid, low, high): KID of the generated features and its bootstrap interval. A resample drawing
    sample i c_i times sums its kernel block as c^T K c and its diagonal as sum_i c_i K_ii, so all resamples take
    one product K @ C (n x n by n x resamples) instead of gathering an n x n block each: the same numbers as
    KernelToReference.mmd(k_gg, cross_means, index), at N = 10,000 in seconds instead of minutes."""
    k_gg, cross_means = kernel_to_reference.kernels(features)
    value = kernel_to_reference.mmd(k_gg, cross_means)
    n = len(features)
    counts = np.stack([np.bincount(i, minlength=n) for i in resample_indices(n, resamples=resamples, seed=seed)],
                      axis=1).astype(np.float64)                                    # C: (n, resamples)
    blocks = np.einsum('ir,ir->r', counts, k_gg @ counts)                           # c^T K c per resample
    diagonals = np.diagonal(k_gg) @ counts                                          # sum_i c_i K_ii
    within = (blocks - diagonals) / (n * (n - 1))
    draws = within + kernel_to_reference.reference_term - 2 * (cross_means @ counts) / n
    return shifted_interval(value, draws)
