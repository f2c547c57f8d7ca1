"""sFID's companions against closed forms and independent implementations written here (ADM's definitions)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from uvit import metrics


def test_precision_recall_on_a_lattice_with_known_answers():
    """Reference: 100 points at 0..99 on a line (3rd-nearest-neighbour squared radius 4 inside, 9 at the ends).
    Samples: 0..49 exactly, plus 50 far points 10 apart. Precision: the 50 on the line, 1/2. Recall: the reference
    points inside some sample ball on the line (squared radii 4; 9 at the ends 0 and 49, whose ball reaches 52):
    0..52, 53/100."""
    ref = np.stack([np.arange(100.0), np.zeros(100)], 1)
    samples = np.concatenate([ref[:50], np.stack([1000 + 10 * np.arange(50.0), np.zeros(50)], 1)])
    precision, recall = metrics.precision_recall(ref, samples)
    assert precision == 0.5
    assert recall == 0.53


def brute_precision_recall(ref, samples, k=3):
    """Loops over every pair (Kynkäänniemi et al. 2019, eqs. 1-2 with squared distances, as ADM compares them)."""

    def radius(points, i):
        return sorted(np.sum((points[i] - q) ** 2) for j, q in enumerate(points) if j != i)[k - 1]

    def inside(point, centres):
        return any(np.sum((point - c) ** 2) <= radius(centres, j) for j, c in enumerate(centres))

    return np.mean([inside(s, ref) for s in samples]), np.mean([inside(r, samples) for r in ref])


def test_precision_recall_equal_a_brute_force_count():
    rng = np.random.default_rng(0)
    ref, samples = rng.normal(size=(40, 5)), rng.normal(0.7, 1.3, size=(30, 5))
    assert metrics.precision_recall(ref, samples) == pytest.approx(
        brute_precision_recall(ref, samples), abs=0
    )


def brute_mmd2(x, y):
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the polynomial kernel, by explicit pairs."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / m**2
    return xx + yy - 2 * xy


def test_kid_of_whole_sets_is_the_unbiased_mmd():
    """Subsets as large as the sets: every subset is the whole set, KID is that set pair's unbiased MMD^2."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(25, 4)), rng.normal(0.5, 1.0, size=(25, 4))
    assert metrics.kernel_inception_distance(x, y, subsets=3, subset_size=25) == pytest.approx(
        brute_mmd2(x, y)
    )


def test_kid_subsets_read_off_the_whole_kernel_equal_direct_ones(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    whole = metrics.kernel_inception_distance(x, y, subsets=5, subset_size=20)
    monkeypatch.setattr(metrics, "_WHOLE_KERNEL_LIMIT", 0)
    assert metrics.kernel_inception_distance(x, y, subsets=5, subset_size=20) == pytest.approx(
        whole, rel=1e-12
    )


def test_kid_matches_its_closed_form_in_one_dimension():
    """d = 1, x ~ N(a, 1), y ~ N(b, 1): E k(u, v) = E[u^3]E[v^3] + 3 E[u^2]E[v^2] + 3 E[u]E[v] + 1 for independent
    u, v; MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y). The estimate is unbiased: within 5 standard errors."""
    a, b, n = 0.5, -0.3, 800

    def moments(mu):
        return mu, mu**2 + 1, mu**3 + 3 * mu

    def ek(p, q):
        (p1, p2, p3), (q1, q2, q3) = moments(p), moments(q)
        return p3 * q3 + 3 * p2 * q2 + 3 * p1 * q1 + 1

    exact = ek(a, a) + ek(b, b) - 2 * ek(a, b)
    rng = np.random.default_rng(4)
    estimates = [
        metrics.kernel_inception_distance(
            rng.normal(a, 1, (n, 1)), rng.normal(b, 1, (n, 1)), subsets=1, subset_size=n
        )
        for _ in range(12)
    ]
    stderr = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) < 5 * stderr


def test_inception_score_on_constructed_logits():
    """Confident uniform predictions over K classes: IS = K; one class for all: 1; two classes with
    p(y|x) = (q, 1 - q) and (1 - q, q), marginal (1/2, 1/2): exp(q log 2q + (1 - q) log 2(1 - q))."""
    eye = 50.0 * np.eye(10)
    assert metrics.inception_score(np.tile(eye, (3, 1))) == pytest.approx(10, rel=1e-9)
    assert metrics.inception_score(np.tile(eye[:1], (30, 1))) == pytest.approx(1, rel=1e-9)
    q = 0.8
    logits = np.log(np.array([[q, 1 - q], [1 - q, q]] * 5))
    expected = np.exp(q * np.log(2 * q) + (1 - q) * np.log(2 * (1 - q)))
    assert metrics.inception_score(logits) == pytest.approx(expected, rel=1e-12)


def test_inception_score_averages_its_splits():
    eye = 50.0 * np.eye(4)
    logits = np.concatenate([np.tile(eye, (2, 1)), np.tile(eye[:1], (8, 1))])  # split 1: IS 4; split 2: IS 1
    assert metrics.inception_score(logits, split_size=8) == pytest.approx(2.5, rel=1e-9)
