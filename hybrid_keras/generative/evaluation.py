"""Judging samples of a generative model: Frechet distance and a memorisation check.

- :func:`frechet_distance`: the distance between two Gaussians fitted to two sets of
  features (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
  Nash Equilibrium", NeurIPS 2017; FID when the features are Inception's):
  ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. Which features is the caller's
  choice (the benchmarks use a zoo classifier trained on the real images). The value depends
  on the number of rows (covariances from few rows are biased), so compare sets of equal size.
- :func:`nearest_training_images`: each sample's nearest training images in pixel space
  (Euclidean), found with :class:`hybrid_keras.fanng.FanngIndex` (TensorFlow, imported on use)
  or exactly with NumPy.
- :func:`memorisation_report`: how close samples come to the training set compared with how
  close held-out real images come to it. A generator that makes new images puts its samples
  about as far from the training set as new real images are; one that copies puts them much
  closer.

NumPy, float64 throughout.
"""

from __future__ import annotations

import numpy as np

SEARCHES = ("auto", "fanng", "exact")
# search="auto" compares every pair below this many training images (the FANNG graph is not worth building).
EXACT_BELOW = 256
DEFAULT_EF = 256  # FANNG search breadth: on 8,000 MNIST digits it finds the exact nearest image for almost every query


def _feature_matrix(features, name: str) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array [rows >= 2, features]. Received: shape={array.shape}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric. Received: dtype={array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite. Received: an array with NaN or infinite values")
    return array


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """The mean ``[D]`` and covariance ``[D, D]`` (unbiased, rows are observations) of ``features`` ``[N, D]``."""
    array = _feature_matrix(features, "features")
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _psd_eigenvalues(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite matrix with rounding noise set to 0:
    those below ``size * eps`` of the largest, which are zeros of a singular matrix (a
    covariance of fewer rows than features) whose square roots would otherwise add up."""
    tolerance = values.size * np.finfo(np.float64).eps * float(np.max(np.abs(values), initial=0.0))
    return np.where(values > tolerance, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_psd_eigenvalues(values))) @ vectors.T


def frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """The Frechet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b).

    ``Tr((S_a S_b)^(1/2))`` is computed as ``Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``: the two
    matrices are similar, so they share eigenvalues, and the second is symmetric positive
    semi-definite, so its eigenvalues are real and non-negative (no complex parts to discard,
    as a general ``sqrtm`` of the non-symmetric product can leave).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64).reshape(-1), np.asarray(mu_b, np.float64).reshape(-1)
    dim = mu_a.shape[0]
    sigma_a, sigma_b = (np.asarray(s, np.float64) for s in (sigma_a, sigma_b))
    for name, value, shape in (("mu_b", mu_b, (dim,)), ("sigma_a", sigma_a, (dim, dim)), ("sigma_b", sigma_b, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match mu_a. Received: shape={value.shape}")
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(_psd_eigenvalues(eigenvalues))))
    difference = mu_a - mu_b
    value = float(difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # rounding can leave a tiny negative value for identical statistics


def frechet_distance(features_a, features_b) -> float:
    """The Frechet distance between Gaussians fitted to ``features_a`` ``[N, D]`` and
    ``features_b`` ``[M, D]`` (rows are images). 0 for identical sets; symmetric."""
    a = _feature_matrix(features_a, "features_a")
    b = _feature_matrix(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same number of features. "
                         f"Received: {a.shape[1]} and {b.shape[1]}")
    return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))


def _image_rows(images, name: str, shape=None) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim < 2 or array.shape[0] < 1:
        raise ValueError(f"{name} must be a batch of images [N, ...] with N >= 1. Received: shape={array.shape}")
    if shape is not None and array.shape[1:] != shape:
        raise ValueError(f"{name} must be images of the training images' shape {shape}. "
                         f"Received: shape={array.shape[1:]}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric. Received: dtype={array.dtype}")
    rows = array.reshape(array.shape[0], -1)
    if rows.dtype.kind == "f" and not np.all(np.isfinite(rows)):
        raise ValueError(f"{name} must be finite. Received: images with NaN or infinite values")
    return rows


def _exact_nearest(queries: np.ndarray, base: np.ndarray, k: int, chunk: int = 1024):
    base = base.astype(np.float64)
    base_norms = np.einsum("ij,ij->i", base, base)
    indices = np.empty((len(queries), k), np.int64)
    distances = np.empty((len(queries), k), np.float64)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk].astype(np.float64)
        squared = np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * block @ base.T + base_norms[None, :]
        order = np.argsort(squared, axis=1, kind="stable")[:, :k]
        indices[start:start + chunk] = order
        distances[start:start + chunk] = np.take_along_axis(squared, order, axis=1)
    return indices, np.sqrt(np.clip(distances, 0.0, None))


def _fanng_nearest(queries: np.ndarray, base: np.ndarray, k: int, ef: int):
    from hybrid_keras.fanng import FanngIndex

    # Pixels are integers in [0, 255]: stored as bytes, losslessly (a quarter of float32's memory).
    pixels = base.dtype == np.uint8 or (base.min() >= 0 and base.max() <= 255 and np.array_equal(base, np.round(base)))
    index = FanngIndex(base.shape[1], metric="l2", storage="uint8" if pixels else "float32", verbose=False, seed=0)
    index.add(base)
    indices, squared = index.search(queries.astype(np.float32), k=k, ef=max(int(ef), k))
    # FANNG's distances are float32 sums; recompute them exactly for the rows it found.
    exact = np.sum((queries[:, None, :].astype(np.float64) - base[indices].astype(np.float64)) ** 2, axis=-1)
    return indices.astype(np.int64), np.sqrt(np.where(indices >= 0, exact, np.inf))


def nearest_training_images(samples, training_images, k: int = 1, *, search: str = "auto", ef: int = DEFAULT_EF):
    """The ``k`` nearest training images of each sample, in pixel space.

    ``samples`` ``[N, ...]`` and ``training_images`` ``[M, ...]`` are images of one shape (any
    dtype; pixels compared as numbers, e.g. uint8 [0, 255]). ``search``: "fanng" (a
    :class:`~hybrid_keras.fanng.FanngIndex` over the training images, needs TensorFlow;
    ``ef`` trades speed for recall), "exact" (NumPy, every pair) or "auto" (exact below
    :data:`EXACT_BELOW` training images, else FANNG).

    Returns ``(indices [N, k] int64, distances [N, k] float64)``: rows of ``training_images``,
    nearest first, and their Euclidean distances (not squared).
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}. Received: search={search!r}")
    base_images = np.asarray(training_images)
    base = _image_rows(base_images, "training_images")
    queries = _image_rows(samples, "samples", shape=base_images.shape[1:])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(base):
        raise ValueError(f"k must be an integer in [1, {len(base)}] (the number of training images). Received: k={k!r}")
    if search == "exact" or (search == "auto" and len(base) < EXACT_BELOW):
        return _exact_nearest(queries, base, int(k))
    return _fanng_nearest(queries, base, int(k), ef)


def _summary(distances: np.ndarray) -> dict:
    return {"min": float(distances.min()), "p05": float(np.quantile(distances, 0.05)),
            "median": float(np.median(distances)), "mean": float(distances.mean()), "max": float(distances.max())}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``; 1 where both are 0, infinite where only the denominator is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0),
                        np.where(numerator > 0, np.inf, 1.0))


def memorisation_report(samples, train, held_out, *, quantile: float = 0.05, search: str = "auto",
                        ef: int = DEFAULT_EF, details: bool = False) -> dict:
    """Do samples sit closer to the training images than new real images do?

    For every sample and every held-out real image (``held_out``: at least two images of the
    same kind that were not trained on) the Euclidean pixel distance to its nearest image in
    ``train`` is found (:func:`nearest_training_images`). Held-out images show how far a *new*
    image of the data lies from the training set; a sample much closer than that is a copy.

    That comparison assumes samples look like real images. Smooth or blurry samples (an
    undertrained generator's) lie close to *every* image in pixel space, so they would seem
    near the training set without copying it. The second comparison corrects for that: each
    sample's distance to its nearest training image divided by its distance to its nearest
    held-out image, against the same ratio for each held-out image (nearest training image /
    nearest *other* held-out image). A blurry sample is near both sets, so its ratio stays
    near the held-out images' (somewhat below: the larger set still tends to hold a nearer
    image); a copy's ratio is 0. In the tests, noise-free samples of the data's clusters were
    all "closer than held-out images" by the first comparison and a quarter by the second;
    copies were nearly all flagged by both.

    Returns a dict of summary figures:

    - ``sample_nearest`` / ``held_out_nearest``: min, 5th percentile, median, mean, max of
      the nearest-training distances;
    - ``median_ratio``: median sample distance / median held-out distance (about 1 for a
      generator that makes new images, well below 1 for one that copies, or blurs);
    - ``close_threshold``: the held-out distances' ``quantile`` (default 5th percentile), and
      ``fraction_closer``: the fraction of samples nearer than it (about ``quantile`` when
      samples are as new as held-out images);
    - ``closer_than_any_held_out``: samples nearer a training image than every held-out image is;
    - ``relative``: the second comparison: the median ratio of samples and of held-out
      images, the held-out ratios' ``quantile`` as ``threshold``, and ``fraction_below`` it
      (about ``quantile`` for samples like new real images, near 1 for copies);
    - with ``details``, also the arrays ``sample_index`` (nearest training row per sample),
      ``sample_distance`` and ``held_out_distance``.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must be in (0, 1). Received: quantile={quantile!r}")
    if len(np.asarray(held_out)) < 2:
        raise ValueError(f"held_out must hold at least 2 images. Received: {len(np.asarray(held_out))}")
    sample_index, sample_distance = nearest_training_images(samples, train, 1, search=search, ef=ef)
    _, held_out_distance = nearest_training_images(held_out, train, 1, search=search, ef=ef)
    sample_index, sample_distance, held_out_distance = sample_index[:, 0], sample_distance[:, 0], held_out_distance[:, 0]
    _, sample_to_held_out = nearest_training_images(samples, held_out, 1, search=search, ef=ef)
    # Each held-out image's nearest other held-out image: the second of its two nearest (the first is itself).
    _, held_out_pairs = nearest_training_images(held_out, held_out, 2, search=search, ef=ef)
    sample_ratio = _ratio(sample_distance, sample_to_held_out[:, 0])
    held_out_ratio = _ratio(held_out_distance, held_out_pairs[:, 1])
    threshold = float(np.quantile(held_out_distance, quantile))
    held_out_median = float(np.median(held_out_distance))
    ratio_threshold = float(np.quantile(held_out_ratio, quantile))
    report = {
        "samples": int(len(sample_distance)),
        "held_out": int(len(held_out_distance)),
        "training_images": int(len(np.asarray(train))),
        "sample_nearest": _summary(sample_distance),
        "held_out_nearest": _summary(held_out_distance),
        "median_ratio": float(np.median(sample_distance) / held_out_median) if held_out_median > 0 else float("inf"),
        "quantile": float(quantile),
        "close_threshold": threshold,
        "fraction_closer": float(np.mean(sample_distance < threshold)),
        "closer_than_any_held_out": int(np.sum(sample_distance < held_out_distance.min())),
        "relative": {"samples_median": float(np.median(sample_ratio)), "held_out_median": float(np.median(held_out_ratio)),
                     "threshold": ratio_threshold, "fraction_below": float(np.mean(sample_ratio < ratio_threshold))},
    }
    if details:
        report.update(sample_index=sample_index, sample_distance=sample_distance, held_out_distance=held_out_distance)
    return report
