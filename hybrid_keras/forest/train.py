"""Features from a Keras backbone, a forest trained on them, and the two joined again.

Per-pixel features are large (a 360x480 CamVid frame through a stride-8 backbone with
512 channels is 5.5 MB of float32 per image), and TF-DF holds its whole training set in
memory with a pre-sorted index of about twice its size. So pixel extraction samples a
fixed number of pixels per image (balanced over the classes present), never keeps the
full feature maps, and states up front how much memory the result will take.

Nothing here imports TensorFlow at module level: feature extraction runs on any Keras
backend, a ``tf.data.Dataset`` is recognised without importing TensorFlow, and
TF-DF is imported only when ``backend="tfdf"`` trains.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

import keras
import numpy as np

from hybrid_keras.forest.layer import ForestLayer

KINDS = ("random_forest", "gradient_boosted_trees")
BACKENDS = ("ydf", "tfdf")
# TF-DF/YDF keep about 3x the raw float32 features while training (values + sorted index).
TRAINING_MEMORY_FACTOR = 3


def _feature_model(backbone: keras.Model, layer: str | None) -> keras.Model:
    if layer is None:
        return backbone
    return keras.Model(backbone.inputs, backbone.get_layer(layer).output, name=f"{backbone.name}_{layer}")


def _is_tf_dataset(data) -> bool:
    return hasattr(data, "as_numpy_iterator") and hasattr(data, "cardinality")


def _batches(data, batch_size: int):
    """Yields (images, labels or None) numpy batches from arrays, a tuple or a tf.data.Dataset."""
    if _is_tf_dataset(data):
        for element in data.as_numpy_iterator():
            if isinstance(element, tuple):
                yield element[0], element[1]
            else:
                yield element, None
        return
    images, labels = data if isinstance(data, tuple) else (data, None)
    images = np.asarray(images)
    for start in range(0, len(images), batch_size):
        yield images[start: start + batch_size], None if labels is None else np.asarray(labels)[start: start + batch_size]


def _count(data) -> int | None:
    if _is_tf_dataset(data):
        cardinality = int(data.cardinality())
        return cardinality if cardinality > 0 else None
    images = data[0] if isinstance(data, tuple) else data
    return len(images)


def extract_features(backbone: keras.Model, data, *, layer: str | None = None, pooling: str = "avg",
                     batch_size: int = 64, verbose: int = 1):
    """One feature vector per image.

    ``data``: images [N, H, W, C] (already preprocessed for the backbone), a tuple
    ``(images, labels)``, or a ``tf.data.Dataset`` of images or (images, labels) batches.
    ``layer`` names the backbone layer to read (default: its output); feature maps are
    pooled with ``pooling`` ("avg" or "max"). Returns ``features`` [N, F] float32, or
    ``(features, labels)`` when the data carries labels.
    """
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    extractor = _feature_model(backbone, layer)
    total = _count(data)
    bar = keras.utils.Progbar(total, unit_name="image") if verbose else None
    features, labels = [], []
    for images, batch_labels in _batches(data, batch_size):
        output = keras.ops.convert_to_numpy(extractor(images, training=False)).astype(np.float32)
        if output.ndim == 4:
            output = output.mean(axis=(1, 2)) if pooling == "avg" else output.max(axis=(1, 2))
        elif output.ndim != 2:
            raise ValueError(f"the backbone output has shape {output.shape}; expected [B, F] or [B, H, W, F]")
        features.append(output)
        if batch_labels is not None:
            labels.append(np.asarray(batch_labels))
        if bar:
            bar.add(len(images))
    features = np.concatenate(features)
    return (features, np.concatenate(labels)) if labels else features


def pixel_memory_bytes(num_images: int, pixels_per_image: int, channels: int) -> int:
    """Bytes the sampled pixel features (float32) and labels (int32) will take."""
    return num_images * pixels_per_image * (channels + 1) * 4


def sample_pixels(mask: np.ndarray, count: int, rng: np.random.Generator, *, ignore_label: int | None,
                  class_balanced: bool) -> np.ndarray:
    """Flat indices of up to ``count`` pixels of ``mask`` (ignored pixels never chosen).

    Class balanced: every class present gets an equal share in expectation (pixels are
    drawn with weight 1 / frequency of their class), so small classes such as poles
    and signs are not drowned by road and sky.
    """
    labels = mask.reshape(-1)
    valid = np.flatnonzero(labels != ignore_label) if ignore_label is not None else np.arange(labels.size)
    if valid.size == 0:
        return valid
    if valid.size <= count:
        return valid
    if not class_balanced:
        return rng.choice(valid, size=count, replace=False)
    _, inverse, frequency = np.unique(labels[valid], return_inverse=True, return_counts=True)
    weights = 1.0 / frequency[inverse]
    return rng.choice(valid, size=count, replace=False, p=weights / weights.sum())


def _resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of integer masks [B, H, W] to a feature grid, sampling cell centres."""
    rows = np.minimum(((np.arange(height) + 0.5) * masks.shape[1] / height).astype(int), masks.shape[1] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * masks.shape[2] / width).astype(int), masks.shape[2] - 1)
    return masks[:, rows][:, :, cols]


def extract_pixel_features(backbone: keras.Model, data, *, layer: str | None = None, pixels_per_image: int = 512,
                           class_balanced: bool = True, ignore_label: int | None = 255, batch_size: int = 8,
                           max_memory_bytes: int = 2 << 30, seed: int = 0, verbose: int = 1):
    """Per-pixel features sampled from a backbone's feature map, with their labels.

    ``data``: ``(images, masks)`` arrays or a ``tf.data.Dataset`` of such batches;
    masks are integer class maps [N, H, W] at image resolution and are resized
    (nearest) to the feature map. At most ``pixels_per_image`` labelled pixels are
    kept per image; ``ignore_label`` pixels never are. Raises before extracting
    when the result would exceed ``max_memory_bytes``.
    Returns ``(features [M, C] float32, labels [M] int32)``.
    """
    if pixels_per_image < 1:
        raise ValueError(f"pixels_per_image must be >= 1, got {pixels_per_image}")
    extractor = _feature_model(backbone, layer)
    if len(extractor.output.shape) != 4:
        raise ValueError(f"per-pixel features need a [B, H, W, C] feature map; the output has shape {extractor.output.shape}")
    channels = int(extractor.output.shape[-1])
    total = _count(data)
    if total is not None:
        needed = pixel_memory_bytes(total, pixels_per_image, channels)
        if needed > max_memory_bytes:
            affordable = max(1, max_memory_bytes // ((channels + 1) * 4 * total))
            raise MemoryError(
                f"sampling {pixels_per_image} pixels x {channels} channels from {total} images needs "
                f"{needed / 2**20:.0f} MiB, over max_memory_bytes={max_memory_bytes / 2**20:.0f} MiB; "
                f"use pixels_per_image <= {affordable} or raise the bound"
            )
        if verbose:
            print(f"[forest] sampling up to {pixels_per_image} pixels/image from {total} images: "
                  f"{needed / 2**20:.1f} MiB of features (training takes about {TRAINING_MEMORY_FACTOR}x that)")
    rng = np.random.default_rng(seed)
    bar = keras.utils.Progbar(total, unit_name="image") if verbose else None
    features, labels = [], []
    for images, masks in _batches(data, batch_size):
        if masks is None:
            raise ValueError("per-pixel extraction needs masks: pass (images, masks)")
        masks = np.asarray(masks)
        if masks.ndim == 4 and masks.shape[-1] == 1:
            masks = masks[..., 0]
        if masks.shape[:3] != tuple(images.shape[:3]):
            raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
        feature_map = keras.ops.convert_to_numpy(extractor(images, training=False)).astype(np.float32)
        grid = _resize_nearest(masks, feature_map.shape[1], feature_map.shape[2])
        for fmap, mask in zip(feature_map, grid):
            chosen = sample_pixels(mask, pixels_per_image, rng, ignore_label=ignore_label, class_balanced=class_balanced)
            features.append(fmap.reshape(-1, channels)[chosen])
            labels.append(mask.reshape(-1)[chosen].astype(np.int32))
        if bar:
            bar.add(len(images))
    return np.concatenate(features), np.concatenate(labels)


def _check_training_data(features, labels, task):
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be [examples, F], got shape {features.shape}")
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    if task == "classification" and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"classification labels must be integers, got {labels.dtype}")
    return features, labels


def train_forest(features, labels, *, kind: str = "random_forest", backend: str = "ydf",
                 task: str = "classification", num_trees: int = 100, max_depth: int = 16, min_examples: int = 5,
                 verbose: int = 1, **hyperparameters):
    """Train a random forest or gradient boosted trees on [N, F] features.

    ``backend="ydf"`` returns a ydf model, ``"tfdf"`` a TF-DF Keras model (tf_keras);
    both compile with :meth:`ForestLayer.from_model`. Any other learner
    hyper-parameter (``num_candidate_attributes_ratio``, ``shrinkage``, ``subsample``,
    ...) passes through.

    ``verbose``: 0 prints nothing; 1 (default) one line saying what is trained and how
    long it took; 2 the library's own logs as well (its whole data spec: hundreds of
    lines for wide features). Below 2, the libraries' native logs are held back and
    shown only if training fails.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    features, labels = _check_training_data(features, labels, task)
    settings = dict(num_trees=num_trees, max_depth=max_depth, min_examples=min_examples, **hyperparameters)
    library_verbose = 2 if verbose == 2 else 0
    if verbose:
        print(f"[forest] training {kind.replace('_', ' ')} ({backend}, {num_trees} trees, max depth {max_depth}) on "
              f"{features.shape[0]:,} x {features.shape[1]} features ...", end="\n" if verbose == 2 else "", flush=True)
    start = time.perf_counter()
    with contextlib.nullcontext() if verbose == 2 else _native_logs_held_back():
        if backend == "ydf":
            import ydf

            learner = ydf.RandomForestLearner if kind == "random_forest" else ydf.GradientBoostedTreesLearner
            ydf_task = ydf.Task.CLASSIFICATION if task == "classification" else ydf.Task.REGRESSION
            model = learner(label="label", task=ydf_task, **settings).train(
                {"features": features, "label": labels}, verbose=library_verbose)
        else:
            import tensorflow as tf
            import tensorflow_decision_forests as tfdf

            model_class = tfdf.keras.RandomForestModel if kind == "random_forest" else tfdf.keras.GradientBoostedTreesModel
            tfdf_task = tfdf.keras.Task.CLASSIFICATION if task == "classification" else tfdf.keras.Task.REGRESSION
            model = model_class(task=tfdf_task, verbose=library_verbose, **settings)
            # TF-DF reads the whole dataset once; large batches make that fast.
            dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(8192)
            model.fit(dataset, verbose=library_verbose)
    if verbose:
        print(f"{'[forest] ' if verbose == 2 else ' '}trained in {time.perf_counter() - start:.1f} s", flush=True)
    return model


@contextlib.contextmanager
def _native_logs_held_back():
    """Sends what C++ code writes to stderr (TF-DF logs its whole data spec there, at any
    verbosity) to a temporary file; replays its end if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            tail = held.read().decode(errors="replace").splitlines()[-40:]
            if tail:
                print("[forest] the training library's last log lines:\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def attach(backbone: keras.Model, forest: ForestLayer, *, layer: str | None = None, pooling: str | None = "avg",
           upsample: bool = True, name: str | None = None) -> keras.Model:
    """One functional model: images -> backbone features -> forest -> probabilities.

    Per image (``pooling`` "avg" or "max") the feature map is pooled first; per pixel
    (``pooling=None``) the forest runs on every cell of the feature map and, with
    ``upsample``, its probabilities are resized bilinearly to the input size, as in
    the talk's segmentation diagram. The result exports with ``hk.export_saved_model``.
    """
    if not isinstance(forest, ForestLayer):
        raise TypeError(f"forest must be a ForestLayer (use ForestLayer.from_model), got {type(forest).__name__}")
    extractor = _feature_model(backbone, layer)
    features = extractor.output
    if len(features.shape) == 4 and pooling is not None:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        features = pool(name="forest_pool")(features)
    outputs = forest(features)
    if len(outputs.shape) == 4 and upsample:
        height, width = backbone.inputs[0].shape[1:3]
        if height is None or width is None:
            raise ValueError("upsampling to the input size needs a backbone with a fixed input size")
        if (outputs.shape[1], outputs.shape[2]) != (height, width):
            outputs = keras.layers.Resizing(height, width, interpolation="bilinear", name="forest_upsample")(outputs)
    return keras.Model(backbone.inputs, outputs, name=name or f"{backbone.name}_forest")


