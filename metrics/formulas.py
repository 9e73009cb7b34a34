"""The metric formulas, as pure functions of feature arrays. No networks, no I/O.

Conventions follow NVIDIA's stylegan2-ada-pytorch metrics, the code behind the published numbers:
covariances divide by n (not n - 1), KID is the unbiased MMD^2 with the cubic polynomial kernel
averaged over random subsets, precision/recall use k-NN radii that count the point itself,
Inception Score uses 10 splits and the population standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (divided by n, as the official FID does) of features [n, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    mu = x.mean(axis=0)
    return mu, x.T @ x / x.shape[0] - np.outer(mu, mu)


def _nonnegative(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise set to 0: values below the usual rank
    tolerance (largest * size * machine eps) cannot be told from zero."""
    tol = eigenvalues.max(initial=0.0) * eigenvalues.size * np.finfo(np.float64).eps
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_nonnegative(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet distance of two gaussians.

    tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which equal those of
    the symmetric PSD matrix S2^(1/2) S1 S2^(1/2). Taking them from that symmetric matrix is the
    same quantity the official scipy.linalg.sqrtm computes, 2-3x faster at 1024-2048-d (see
    benchmarks/metric_speed.py), and
    exact (FID of a set with itself is 0) on singular covariances (fewer samples than dimensions),
    where sqrtm's rounding leaves an error of about 1e-4 at 2048-d.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root2 = _sqrt_psd(s2)
    eig = np.linalg.eigvalsh(root2 @ s1 @ root2)
    tr_covmean = np.sqrt(_nonnegative(eig)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kernel_inception_distance(
    gen: np.ndarray, real: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
    rng: np.random.Generator | None = None,
) -> float:
    """Unbiased MMD^2 with kernel k(x, y) = (x.y / D + 1)^3, averaged over random equal-size subsets.

    Each subset draws m = min(len(gen), len(real), max_subset_size) rows of each set without
    replacement; the within-set kernel sums leave out the diagonal (the unbiased estimator).
    """
    rng = rng if rng is not None else np.random.default_rng()
    gen, real = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    d = real.shape[1]
    m = min(gen.shape[0], real.shape[0], max_subset_size)
    total = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        total += within - 2 * k_xy.sum() / (m * m)
    return float(total / num_subsets)


def _pairwise_distances(rows: torch.Tensor, cols: torch.Tensor, col_batch: int) -> torch.Tensor:
    return torch.cat([torch.cdist(rows, c) for c in cols.split(col_batch)], dim=1)


def knn_radii(manifold: torch.Tensor, k: int, row_batch: int = 10_000) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = [_pairwise_distances(rows, manifold, row_batch).kthvalue(k + 1, dim=1).values
             for rows in manifold.split(row_batch)]
    return torch.cat(radii)


def coverage(
    manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, row_batch: int = 10_000
) -> float:
    """Fraction of probes that fall inside at least one manifold point's k-NN hypersphere."""
    inside = [(_pairwise_distances(rows, manifold, row_batch) <= radii).any(dim=1)
              for rows in probes.split(row_batch)]
    return float(torch.cat(inside).float().mean())


def precision_recall(
    real: torch.Tensor, gen: torch.Tensor, k: int = 3, row_batch: int = 10_000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) from k-NN hyperspheres.

    precision: share of generated points inside the real manifold; recall: share of real points
    inside the generated manifold. Distances are taken in float32 (the official code rounds the
    features to float16 first, which moves the results in the third decimal at most).
    """
    real, gen = real.to(torch.float32), gen.to(torch.float32)
    precision = coverage(real, knn_radii(real, k, row_batch), gen, row_batch)
    recall = coverage(gen, knn_radii(gen, k, row_batch), real, row_batch)
    return precision, recall


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of the images, as mean and (population) std over splits."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    n = log_p.shape[0]
    scores = []
    for i in range(num_splits):
        part = log_p[i * n // num_splits:(i + 1) * n // num_splits]
        log_marginal = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def filtered_mean(dist: np.ndarray, lo_pct: float = 1, hi_pct: float = 99) -> float:
    """Mean of the values between the lo_pct-th and hi_pct-th percentiles: PPL's outlier rejection.

    The bounds are taken as existing sample values ('lower' and 'higher'), as the official PPL does.
    """
    dist = np.asarray(dist, np.float64)
    lo = np.percentile(dist, lo_pct, method="lower")
    hi = np.percentile(dist, hi_pct, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())
