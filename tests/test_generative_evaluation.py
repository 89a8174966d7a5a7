"""Frechet distance against its closed form and scipy's sqrtm; nearest training images against
brute force; the memorisation report on a hand-computed case."""

import itertools

import numpy as np
import pytest

from hybrid_keras.generative import frechet_distance, memorisation_report, nearest_training_images
from hybrid_keras.generative.evaluation import frechet_distance_from_statistics


def _signs(dim):
    """Every +-1 pattern in ``dim`` dimensions: mean exactly 0, sample covariance exactly
    2^dim / (2^dim - 1) times the identity."""
    return np.array(list(itertools.product([-1.0, 1.0], repeat=dim)))


def test_diagonal_gaussians_have_the_closed_form():
    points = _signs(3)
    variance = len(points) / (len(points) - 1)
    mu_a, mu_b = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 2.5])
    scale_a, scale_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.5, 0.5])
    a, b = mu_a + points * scale_a, mu_b + points[::-1] * scale_b
    # Commuting (diagonal) covariances: Tr((S_a S_b)^1/2) = sum sqrt(var_a var_b), so the
    # trace term is sum (sd_a - sd_b)^2.
    expected = np.sum((mu_a - mu_b) ** 2) + variance * np.sum((scale_a - scale_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_sqrtm_on_correlated_features(rng):
    from scipy import linalg

    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6))
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = (np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b)
                 - 2 * np.trace(linalg.sqrtm(sigma_a @ sigma_b)).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(reference, rel=1e-9)


def test_same_set_is_zero_and_a_shift_adds_its_square(rng):
    a = rng.normal(size=(64, 10)) * 30.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    few = a[:5]  # 5 rows in 10 dimensions: a singular covariance
    shift = np.arange(10.0)
    assert frechet_distance(few, few + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-6)
    assert frechet_distance(a.astype(np.float32), a.astype(np.float32)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("a, b, match", [
    (np.zeros((4, 3)), np.zeros((4, 2)), "same number of features"),
    (np.zeros((1, 3)), np.zeros((4, 3)), r"features_a must be a 2-D array \[rows >= 2"),
    (np.zeros((4, 3)), np.full((4, 3), np.nan), "features_b must be finite"),
    (np.zeros(4), np.zeros((4, 1)), "features_a must be a 2-D array"),
])
def test_frechet_distance_rejects_bad_features(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


def _clustered_images(rng, count, clusters=12, shape=(6, 6, 1), prototypes=None, scale=25.0):
    """Images near a few prototypes (as real images are), uint8."""
    prototypes = rng.integers(0, 256, size=(clusters, *shape)) if prototypes is None else prototypes
    noise = rng.normal(scale=scale, size=(count, *shape))
    return np.clip(prototypes[rng.integers(0, len(prototypes), count)] + noise, 0, 255).astype(np.uint8)


def _brute_force(queries, base, k):
    q = queries.reshape(len(queries), -1).astype(np.float64)
    b = base.reshape(len(base), -1).astype(np.float64)
    distances = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("search", ["exact", "fanng", "auto"])
def test_nearest_training_images_match_brute_force(rng, search):
    train = _clustered_images(rng, 400)
    samples = _clustered_images(rng, 40).astype(np.float32) + 0.25  # float queries, never tied
    indices, distances = nearest_training_images(samples, train, k=3, search=search)
    expected_indices, expected_distances = _brute_force(samples, train, 3)
    assert indices.shape == (40, 3) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_a_training_image_is_its_own_nearest(rng):
    train = _clustered_images(rng, 300)
    indices, distances = nearest_training_images(train[[7, 123, 299]], train, search="fanng")
    np.testing.assert_array_equal(indices[:, 0], [7, 123, 299])
    np.testing.assert_array_equal(distances[:, 0], 0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": np.zeros((2, 6, 6, 3))}, r"samples must be images of the training images' shape \(6, 6, 1\)"),
    ({"k": 0}, r"k must be an integer in \[1, 10\]"),
    ({"search": "annoy"}, "search must be one of"),
])
def test_nearest_training_images_rejects_bad_input(kwargs, match):
    arguments = {"samples": np.zeros((2, 6, 6, 1)), "training_images": np.zeros((10, 6, 6, 1)), **kwargs}
    with pytest.raises(ValueError, match=match):
        nearest_training_images(**arguments)


def test_memorisation_report_by_hand():
    # Constant 2x2 images: the distance between values u and v is |u - v| * sqrt(4) = 2 |u - v|.
    def images(*values):
        return np.array(values, np.float64)[:, None, None, None] * np.ones((1, 2, 2, 1))

    train, held_out = images(0, 10, 20), images(5, 15, 40)  # nearest training distances 10, 10, 40
    samples = images(10, 3, 37)  # a copy (0), 6, and 34 from the training set
    report = memorisation_report(samples, train, held_out, quantile=0.5, details=True)
    assert report["held_out_nearest"]["median"] == pytest.approx(10.0)
    assert report["sample_nearest"]["median"] == pytest.approx(6.0)
    assert report["median_ratio"] == pytest.approx(0.6)
    assert report["close_threshold"] == pytest.approx(10.0)
    assert report["fraction_closer"] == pytest.approx(2 / 3)
    assert report["closer_than_any_held_out"] == 2
    np.testing.assert_array_equal(report["sample_index"], [1, 0, 2])
    np.testing.assert_allclose(report["sample_distance"], [0.0, 6.0, 34.0])
    # Nearest training / nearest held-out: samples 0/10, 6/4, 34/6; held-out images (nearest
    # other held-out image) 10/20, 10/20, 40/50.
    relative = report["relative"]
    assert relative["samples_median"] == pytest.approx(1.5)
    assert relative["held_out_median"] == pytest.approx(0.5)
    assert relative["threshold"] == pytest.approx(0.5)
    assert relative["fraction_below"] == pytest.approx(1 / 3)


def test_memorisation_report_tells_copies_from_new_and_from_blurred_images(rng):
    prototypes = rng.integers(20, 236, size=(12, 6, 6, 1))
    data = _clustered_images(rng, 700, prototypes=prototypes)
    train, held_out, new = data[:400], data[400:550], data[550:]
    copies = np.clip(train[rng.integers(0, 400, 150)].astype(np.float64) + rng.normal(size=(150, 6, 6, 1)), 0, 255)
    # Samples without the data's pixel noise (an average of many images): near every image of their kind.
    blurred = _clustered_images(rng, 150, prototypes=prototypes, scale=3.0)
    copied = memorisation_report(copies, train, held_out, search="fanng")
    fresh = memorisation_report(new, train, held_out, search="fanng")
    smooth = memorisation_report(blurred, train, held_out, search="fanng")
    assert copied["median_ratio"] < 0.2 and copied["fraction_closer"] > 0.9
    assert copied["relative"]["fraction_below"] > 0.9
    assert 0.8 < fresh["median_ratio"] < 1.25 and fresh["fraction_closer"] < 0.15
    assert fresh["relative"]["fraction_below"] < 0.15
    # Noise-free samples are nearer the training set than new images are (the first check flags
    # them all), but not much nearer it than the held-out set (the second check: copies only).
    assert smooth["median_ratio"] < 0.8 and smooth["fraction_closer"] > 0.9
    assert smooth["relative"]["fraction_below"] < 0.5
    assert "sample_index" not in fresh
