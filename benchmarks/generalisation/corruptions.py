"""The data corruptions of Zhang et al., "Understanding deep learning requires rethinking
generalization" (ICLR 2017), section 2: partially or fully random labels, and three ways of
destroying the images while keeping the true labels. NumPy only, every one seeded.

- ``corrupt_labels``: each label independently, with probability ``p``, replaced by a class
  drawn uniformly from all ``num_classes`` (so it may land on its own class: about
  ``p * (1 - 1/num_classes)`` of the labels change).
- ``shuffle_pixels``: one random permutation of the pixel positions, the same for every
  image (and for the training and test images, given the same seed).
- ``random_pixels``: a different random permutation of the pixel positions for each image.
- ``gaussian_images``: each image replaced by Gaussian noise with the per-channel mean and
  variance of a reference set (by default the images themselves).

A pixel is a position with all of its channels: permutations move whole pixels, so each
image keeps exactly its multiset of (R, G, B) values.
"""

from __future__ import annotations

import numpy as np


def _check_images(images, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`{name}` must be a batch of images [N, height, width, channels]. "
                         f"Received: an array of shape {images.shape}")
    return images


def corrupt_labels(labels, probability: float, num_classes: int, seed: int) -> np.ndarray:
    """``labels`` with each one replaced, with probability ``probability``, by a uniform random class."""
    labels = np.asarray(labels)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must be in [0, 1]. Received: {probability}")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1. Received: {num_classes}")
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be a vector of class indices. Received: shape {labels.shape}")
    rng = np.random.default_rng(seed)
    replaced = rng.random(len(labels)) < probability
    corrupted = labels.copy()
    corrupted[replaced] = rng.integers(0, num_classes, int(replaced.sum()))
    return corrupted


def pixel_permutation(height: int, width: int, seed: int) -> np.ndarray:
    """The permutation of the ``height * width`` pixel positions that ``shuffle_pixels`` applies."""
    return np.random.default_rng(seed).permutation(height * width)


def shuffle_pixels(images, seed: int) -> np.ndarray:
    """Every image's pixels moved by one permutation (``pixel_permutation(H, W, seed)``)."""
    images = _check_images(images)
    n, height, width, channels = images.shape
    order = pixel_permutation(height, width, seed)
    return images.reshape(n, height * width, channels)[:, order].reshape(images.shape)


def random_pixels(images, seed: int) -> np.ndarray:
    """Each image's pixels moved by its own random permutation."""
    images = _check_images(images)
    n, height, width, channels = images.shape
    orders = np.argsort(np.random.default_rng(seed).random((n, height * width)), axis=1)
    flat = images.reshape(n, height * width, channels)
    return np.take_along_axis(flat, orders[:, :, None], axis=1).reshape(images.shape)


def channel_statistics(images) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over all images and positions."""
    images = _check_images(images).astype(np.float64)
    return images.mean(axis=(0, 1, 2)), images.std(axis=(0, 1, 2))


def gaussian_images(images, seed: int, reference=None) -> np.ndarray:
    """Gaussian noise images of ``images``' shape (float32), with ``reference``'s per-channel
    mean and variance (default: those of ``images``). Values are not clipped."""
    images = _check_images(images)
    mean, std = channel_statistics(images if reference is None else _check_images(reference, "reference"))
    if mean.shape[0] != images.shape[-1]:
        raise ValueError(f"`reference` must have the channels of `images` ({images.shape[-1]}). "
                         f"Received: {mean.shape[0]} channels")
    noise = np.random.default_rng(seed).standard_normal(images.shape)
    return (mean + std * noise).astype(np.float32)
