"""The metric formulas against closed forms, direct computations and hand-worked examples."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from metrics import formulas
from metrics.features import FeatureStats


def random_features(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix * scale + shift).astype(np.float32)


def test_fid_of_a_set_against_itself_is_zero():
    for n, d in [(500, 32), (20, 64)]:  # the second has a singular covariance
        mu, sigma = formulas.mean_cov(random_features(n, d, seed=n))
        assert abs(formulas.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_two_gaussians_matches_the_closed_form():
    # Covariances sharing eigenvectors: FID = |m1 - m2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    d = 6
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    expected = np.square(m1 - m2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert formulas.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-10)

    # Feature sets sampled from those gaussians land on it up to sampling error.
    x = rng.multivariate_normal(m1, s1, size=200_000)
    y = rng.multivariate_normal(m2, s2, size=200_000)
    sampled = formulas.frechet_distance(*formulas.mean_cov(x), *formulas.mean_cov(y))
    assert sampled == pytest.approx(expected, rel=0.02)


def scipy_fid(x, y):
    """The official computation: np.cov with 1/n, scipy.linalg.sqrtm, real part."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * covmean)))


def test_fid_equals_a_direct_scipy_computation():
    x = random_features(3000, 24, seed=1).astype(np.float64)
    y = random_features(2000, 24, seed=2, shift=0.3, scale=1.4).astype(np.float64)
    ours = formulas.frechet_distance(*formulas.mean_cov(x), *formulas.mean_cov(y))
    assert ours == pytest.approx(scipy_fid(x, y), rel=1e-6)


def test_feature_stats_accumulated_in_batches_match_the_whole_set():
    x = random_features(530, 16, seed=3, shift=2.0)
    stats = FeatureStats(max_items=500, capture_all=True)
    for chunk in torch.from_numpy(x).split(64):
        stats.append(chunk)
    assert stats.num_items == 500 and stats.is_full
    mu, sigma = stats.mean_cov()
    mu_ref, sigma_ref = x[:500].astype(np.float64).mean(0), np.cov(x[:500], rowvar=False, bias=True)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-10)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(stats.all(), x[:500])


def test_feature_stats_round_trip_through_npz(tmp_path):
    stats = FeatureStats(max_items=100, capture_all=True)
    stats.append(torch.from_numpy(random_features(100, 8, seed=4)))
    stats.save(tmp_path / "s.npz")
    loaded = FeatureStats.load(tmp_path / "s.npz")
    assert loaded.num_items == 100
    np.testing.assert_array_equal(loaded.all(), stats.all())
    np.testing.assert_allclose(loaded.mean_cov()[1], stats.mean_cov()[1])


def direct_kid(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written as the double sums of its definition."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_a_direct_quadratic_computation():
    # Equal set sizes below max_subset_size: every subset is a permutation of the whole set, and
    # the MMD does not depend on the order, so each subset gives exactly the direct value.
    x = random_features(30, 8, seed=5).astype(np.float64)
    y = random_features(30, 8, seed=6, shift=0.5).astype(np.float64)
    expected = direct_kid(x, y)
    for subsets in (1, 5):
        got = formulas.kernel_inception_distance(x, y, num_subsets=subsets, max_subset_size=1000,
                                                 rng=np.random.default_rng(0))
        assert got == pytest.approx(expected, rel=1e-9)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(7)
    same = [formulas.kernel_inception_distance(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)),
                                               num_subsets=1, rng=rng) for _ in range(400)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    apart = formulas.kernel_inception_distance(rng.normal(size=(200, 4)), rng.normal(1, 1, size=(200, 4)),
                                               num_subsets=10, max_subset_size=100, rng=rng)
    assert apart > 0.1


def as_points(values):
    return torch.tensor(values, dtype=torch.float32).reshape(len(values), -1)


def test_precision_recall_hand_worked_example():
    # real 0, 1, 3 (1-NN radii 1, 1, 2); generated 0.5, 10 (1-NN radii 9.5, 9.5).
    # 0.5 lies within 1 of real 0, 10 is 7 from real 3 > 2: precision 1/2.
    # Every real point lies within 9.5 of generated 0.5: recall 1.
    assert formulas.precision_recall(as_points([0, 1, 3]), as_points([0.5, 10]), k=1) == (0.5, 1.0)


def test_precision_recall_on_constructed_clouds():
    real = as_points(list(range(100)))
    # Half the generated points are the even reals, half a tight cluster far away.
    gen = as_points(list(range(0, 100, 2)) + [1000 + j for j in range(50)])
    # The far cluster is outside every real hypersphere (radii <= 3); the evens' own radii (>= 4)
    # cover every real point.
    assert formulas.precision_recall(real, gen, k=3) == (0.5, 1.0)
    assert formulas.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert formulas.precision_recall(real, real + 10_000, k=3) == (0.0, 0.0)
    # Row batching does not change the answer.
    assert formulas.precision_recall(real, gen, k=3, row_batch=7) == (0.5, 1.0)


def test_inception_score_on_constructed_logits():
    # Confident predictions, every split holding each of 10 classes once: IS = 10 exactly.
    classes = np.arange(100) % 10
    logits = np.eye(1008)[classes] * 60.0
    mean, std = formulas.inception_score(logits, num_splits=10)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # All images the same class: IS = 1.
    assert formulas.inception_score(np.eye(1008)[np.zeros(100, int)] * 60.0)[0] == pytest.approx(1.0)
    # Uniform predictions carry no information: IS = 1.
    assert formulas.inception_score(np.zeros((50, 1008)), num_splits=5)[0] == pytest.approx(1.0)


def test_inception_score_equals_the_direct_formula_on_random_logits():
    logits = np.random.default_rng(8).normal(scale=3, size=(60, 20))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in np.split(p, 3):
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    mean, std = formulas.inception_score(logits, num_splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)


def test_filtered_mean_drops_values_outside_the_percentiles():
    dist = np.arange(1000, dtype=np.float64)
    dist[0], dist[-1] = -1e9, 1e9
    # 'lower' 1st percentile = the 10th smallest value (9), 'higher' 99th = value 990.
    assert formulas.filtered_mean(dist) == pytest.approx(np.arange(9, 991).mean())


def test_filtered_mean_of_chi_square_samples_matches_the_truncated_expectation():
    rng = np.random.default_rng(9)
    samples = rng.chisquare(8, size=200_000)
    lo, hi = scipy.stats.chi2.ppf([0.01, 0.99], 8)
    pdf = scipy.stats.chi2(8)
    truncated = scipy.integrate.quad(lambda x: x * pdf.pdf(x), lo, hi)[0] / 0.98
    assert formulas.filtered_mean(samples) == pytest.approx(truncated, rel=0.005)
