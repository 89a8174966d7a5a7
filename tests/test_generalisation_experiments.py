"""Tests of the generalisation experiments' pieces (benchmarks/generalisation): the label and
image corruptions of Zhang et al. 2017 and the training-curve helpers. NumPy only, seeded,
no models or datasets.

    .venv/bin/python -m pytest tests/test_generalisation_experiments.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generalisation import corruptions, curves  # noqa: E402

K = 10


# ------------------------------------------------------------------------------- labels
def test_label_corruption_with_p_zero_is_the_identity(rng):
    labels = rng.integers(0, K, 500)
    corrupted = corruptions.corrupt_labels(labels, 0.0, K, seed=3)
    np.testing.assert_array_equal(corrupted, labels)
    assert corrupted is not labels  # a copy: the caller's labels stay as they were


@pytest.mark.parametrize("p", [0.2, 0.6, 1.0])
def test_label_corruption_changes_about_p_times_nine_tenths_of_the_labels(rng, p):
    # Each label is replaced with probability p by a uniform class, which is its own class
    # one time in K: P(changed) = p (1 - 1/K). n = 20,000: the binomial spread is < 0.0035.
    labels = rng.integers(0, K, 20_000)
    corrupted = corruptions.corrupt_labels(labels, p, K, seed=7)
    changed = np.mean(corrupted != labels)
    assert abs(changed - p * (1 - 1 / K)) < 0.015
    assert corrupted.min() >= 0 and corrupted.max() < K


def test_label_corruption_draws_uniform_classes_independent_of_the_true_label():
    # All labels class 3, p = 1: the new labels are uniform over all ten classes (class 3
    # included), so a chi-square statistic of the counts is small (df 9: 99.9 % below 27.9).
    labels = np.full(20_000, 3)
    corrupted = corruptions.corrupt_labels(labels, 1.0, K, seed=11)
    counts = np.bincount(corrupted, minlength=K)
    expected = len(labels) / K
    assert np.sum((counts - expected) ** 2 / expected) < 27.9


def test_label_corruption_is_seeded_and_checks_its_arguments(rng):
    labels = rng.integers(0, K, 100)
    np.testing.assert_array_equal(corruptions.corrupt_labels(labels, 0.5, K, seed=1),
                                  corruptions.corrupt_labels(labels, 0.5, K, seed=1))
    assert not np.array_equal(corruptions.corrupt_labels(labels, 0.5, K, seed=1),
                              corruptions.corrupt_labels(labels, 0.5, K, seed=2))
    with pytest.raises(ValueError, match=r"`probability` must be in \[0, 1\]. Received: 1.5"):
        corruptions.corrupt_labels(labels, 1.5, K, seed=0)
    with pytest.raises(ValueError, match="`labels` must be a vector"):
        corruptions.corrupt_labels(labels.reshape(10, 10), 0.5, K, seed=0)


# ------------------------------------------------------------------------------- images
@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)


def _pixel_multiset(image):
    """An image's pixels as a sorted list of (R, G, B) rows."""
    pixels = image.reshape(-1, image.shape[-1])
    return pixels[np.lexsort(pixels.T[::-1])]


@pytest.mark.parametrize("corrupt", [corruptions.shuffle_pixels, corruptions.random_pixels])
def test_pixel_shuffles_keep_each_images_multiset_of_pixels(images, corrupt):
    shuffled = corrupt(images, seed=5)
    assert shuffled.shape == images.shape and shuffled.dtype == images.dtype
    assert not np.array_equal(shuffled, images)
    for before, after in zip(images, shuffled):
        np.testing.assert_array_equal(_pixel_multiset(after), _pixel_multiset(before))


def test_shuffled_pixels_move_every_image_by_one_fixed_permutation(images):
    # Images that are their own position index reveal the permutation applied to each.
    n, h, w, _ = images.shape
    positions = np.broadcast_to(np.arange(h * w).reshape(1, h, w, 1), (n, h, w, 1))
    moved = corruptions.shuffle_pixels(positions, seed=5).reshape(n, h * w)
    assert all(np.array_equal(row, moved[0]) for row in moved)
    np.testing.assert_array_equal(moved[0], corruptions.pixel_permutation(h, w, seed=5))
    np.testing.assert_array_equal(np.sort(moved[0]), np.arange(h * w))
    # the same seed moves other images (a test set) the same way
    other = corruptions.shuffle_pixels(positions[:2], seed=5).reshape(2, h * w)
    np.testing.assert_array_equal(other[0], moved[0])
    # and the channels of a pixel travel together
    np.testing.assert_array_equal(corruptions.shuffle_pixels(images, seed=5).reshape(n, h * w, 3),
                                  images.reshape(n, h * w, 3)[:, moved[0]])


def test_random_pixels_use_a_different_permutation_per_image(images):
    n, h, w, _ = images.shape
    positions = np.broadcast_to(np.arange(h * w).reshape(1, h, w, 1), (n, h, w, 1))
    moved = corruptions.random_pixels(positions, seed=5).reshape(n, h * w)
    for row in moved:
        np.testing.assert_array_equal(np.sort(row), np.arange(h * w))
    assert len({tuple(row) for row in moved}) == n


def test_gaussian_images_match_the_reference_mean_and_variance(rng):
    reference = np.stack([rng.normal(40, 5, (50, 16, 16)), rng.normal(120, 30, (50, 16, 16)),
                          rng.uniform(0, 255, (50, 16, 16))], axis=-1)
    noise = corruptions.gaussian_images(np.zeros((400, 16, 16, 3), np.uint8), seed=2, reference=reference)
    assert noise.shape == (400, 16, 16, 3) and noise.dtype == np.float32
    mean, std = reference.mean(axis=(0, 1, 2)), reference.std(axis=(0, 1, 2))
    np.testing.assert_allclose(noise.mean(axis=(0, 1, 2)), mean, atol=0.01 * std.max())
    np.testing.assert_allclose(noise.std(axis=(0, 1, 2)), std, rtol=0.01)
    # default reference: the images themselves; and a different seed, different noise
    own = corruptions.gaussian_images(reference, seed=2)
    np.testing.assert_allclose(own.mean(axis=(0, 1, 2)), mean, atol=0.05 * std.max())
    assert not np.array_equal(own, corruptions.gaussian_images(reference, seed=3))


def test_image_corruptions_reject_a_non_batch():
    with pytest.raises(ValueError, match=r"`images` must be a batch of images .* Received: an array of shape \(8, 8, 3\)"):
        corruptions.shuffle_pixels(np.zeros((8, 8, 3)), seed=0)


# ------------------------------------------------------------------------------- curves
def test_steps_to_threshold_on_a_hand_made_curve():
    steps = [10, 20, 30, 40, 50]
    accuracy = [0.2, 0.85, 0.9, 0.7, 0.95]
    assert curves.steps_to_threshold(steps, accuracy, 0.9) == 30  # reached exactly counts
    assert curves.steps_to_threshold(steps, accuracy, 0.8) == 20
    assert curves.steps_to_threshold(steps, accuracy, 0.96) is None  # not reached
    assert curves.steps_to_threshold(steps, [0.1, float("nan"), 0.5, 0.5, 0.5], 0.4) == 30  # NaN never counts
    with pytest.raises(ValueError, match="one length"):
        curves.steps_to_threshold(steps, accuracy[:3], 0.5)


def test_moving_average_is_the_trailing_mean():
    values = [1.0, 3.0, 5.0, 7.0, 9.0]
    np.testing.assert_allclose(curves.moving_average(values, 2), [1.0, 2.0, 4.0, 6.0, 8.0])
    np.testing.assert_allclose(curves.moving_average(values, 3), [1.0, 2.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(curves.moving_average(values, 1), values)
    with pytest.raises(ValueError, match="`window` must be >= 1"):
        curves.moving_average(values, 0)


def test_first_nonfinite_finds_a_diverged_run():
    assert curves.first_nonfinite([2.3, 1.9, float("nan"), float("inf")]) == 2
    assert curves.first_nonfinite([2.3, float("inf")]) == 1
    assert curves.first_nonfinite([2.3, 1.9]) is None


# ------------------------------------------------------------------------ the experiments
def _run(rate, steps, train, held_steps, held):
    return {"learning_rate": rate, "steps_to_threshold_train": curves.steps_to_threshold(steps, train, 0.9),
            "steps_to_threshold_held_out": curves.steps_to_threshold(held_steps, held, 0.9),
            "curve": {"step": steps, "batch_accuracy_smoothed": train},
            "held_out_curve": {"step": held_steps, "accuracy": held}}


def test_batch_norm_summary_compares_steps_to_the_plain_networks_best_accuracy():
    from benchmarks.generalisation import batch_norm

    steps, held_steps = [1, 2, 3, 4], [0, 2, 4]
    results = {"runs": {
        "vgg11": [_run(0.01, steps, [0.1, 0.3, 0.5, 0.6], held_steps, [0.1, 0.4, 0.7]),
                  _run(0.1, steps, [0.1, 0.1, 0.1, 0.1], held_steps, [0.1, 0.1, 0.1])],
        "vgg11_bn": [_run(0.01, steps, [0.5, 0.95, 0.9, 0.97], held_steps, [0.1, 0.92, 0.95]),
                     _run(0.1, steps, [0.2, 0.4, 0.6, 0.8], held_steps, [0.1, 0.5, 0.6])]}}
    summary = batch_norm.summarise(results)
    train = summary["train"]
    assert train["plain_best"] == {"accuracy": 0.6, "step": 4, "learning_rate": 0.01}
    assert train["bn_steps_to_plain_best"] == {"0.01": 2, "0.1": 3}
    assert train["plain_steps_over_fastest_bn_steps"] == 2.0  # 4 steps against 2
    assert train["best"] == {"vgg11": None, "vgg11_bn": {"steps": 2, "learning_rate": 0.01}}
    assert train["steps_to"]["vgg11"]["0.01"] == {"0.5": 3, "0.7": None, "0.9": None}
    held = summary["held_out"]
    assert held["plain_best"] == {"accuracy": 0.7, "step": 4, "learning_rate": 0.01}
    assert held["bn_steps_to_plain_best"] == {"0.01": 2, "0.1": None}
    assert held["plain_steps_over_fastest_bn_steps"] == 2.0


def test_memorisation_settings_corrupt_the_training_set_and_keep_the_test_labels(rng):
    from benchmarks.generalisation import memorisation

    train = (rng.integers(0, 256, (40, 8, 8, 3)).astype(np.float32), rng.integers(0, K, 40))
    test = (rng.integers(0, 256, (10, 8, 8, 3)).astype(np.float32), rng.integers(0, K, 10))
    settings = {name: (p, x, y, test_x) for name, p, x, y, test_x in memorisation.settings(train, test, seed=0)}
    assert list(settings) == ["true labels", "labels corrupted p=0.2", "labels corrupted p=0.4",
                              "labels corrupted p=0.6", "labels corrupted p=0.8", "random labels",
                              "shuffled pixels", "random pixels", "gaussian"]
    p, x, y, test_x = settings["true labels"]
    assert p == 0.0 and x is train[0] and test_x is test[0]
    np.testing.assert_array_equal(y, train[1])
    assert settings["random labels"][0] == 1.0
    for name in ("shuffled pixels", "random pixels", "gaussian"):  # true labels, destroyed images
        p, x, y, test_x = settings[name]
        assert p is None and x.shape == train[0].shape and test_x.shape == test[0].shape
        np.testing.assert_array_equal(y, train[1])
        assert not np.array_equal(x, train[0])
    # one permutation for training and test images alike
    _, x, _, test_x = settings["shuffled pixels"]
    np.testing.assert_array_equal(x, corruptions.shuffle_pixels(train[0], 0))
    np.testing.assert_array_equal(test_x, corruptions.shuffle_pixels(test[0], 0))
