"""From TFDS example dicts to what ``keras.Model.fit`` takes, with no preprocessing.

The zoo's models take raw RGB pixels in [0, 255] and normalise inside, so these
helpers only select features, make shapes uniform (resize or pad, so examples batch)
and keep pixels uint8. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

RESIZE_METHODS = ("bilinear", "pad")


def _uniform_image(image, image_size, method: str, rgb: bool):
    import tensorflow as tf

    if rgb and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    if image_size is None:
        return image
    if method == "pad":  # zero-pad or centre-crop: no resampling (MNIST's 28x28 to 32x32)
        return tf.image.resize_with_crop_or_pad(image, *image_size)
    resized = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _check_size(image_size):
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"image_size: expected (height, width) of positive integers or None. "
                         f"Received: {image_size!r}")


def image_label_pairs(dataset, *, image_size=None, method: str = "bilinear", rgb: bool = False,
                      image_key: str = "image", label_key: str = "label"):
    """``{"image", "label", ...}`` examples -> ``(uint8 image, int64 label)``.

    ``image_size=(height, width)`` makes every image that size: ``method="bilinear"``
    resizes (antialiased, rounded back to uint8), ``"pad"`` zero-pads or centre-crops.
    ``rgb=True`` repeats a single grey channel three times (the zoo's models take RGB).
    """
    import tensorflow as tf

    if method not in RESIZE_METHODS:
        raise ValueError(f"method: expected one of {RESIZE_METHODS}. Received: {method!r}")
    _check_size(image_size)

    def pair(example):
        image = _uniform_image(example[image_key], image_size, method, rgb)
        return image, tf.cast(example[label_key], tf.int64)

    return dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)


def image_mask_pairs(dataset, *, image_size=None, image_key: str = "image", mask_key: str = "segmentation_mask"):
    """``{"image", "segmentation_mask", ...}`` examples -> ``(uint8 image, int32 mask [H, W])``.

    ``image_size`` resizes the image bilinearly (antialiased, rounded to uint8) and the
    mask by nearest neighbour, so mask values stay class indices (void included).
    """
    import tensorflow as tf

    _check_size(image_size)

    def pair(example):
        image = _uniform_image(example[image_key], image_size, "bilinear", rgb=False)
        mask = example[mask_key]
        if image_size is not None:
            mask = tf.image.resize(mask, image_size, method="nearest")
        return image, tf.cast(mask[..., 0], tf.int32)

    return dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)


def to_numpy(dataset):
    """A small finite dataset as NumPy arrays: each component of its elements stacked along a new first axis.

    Elements that are tuples give a tuple of arrays, dicts a dict, single tensors one
    array. Every element's component must have the same shape (resize first).
    """
    import numpy as np
    import tensorflow as tf

    batches = list(dataset.batch(1024).as_numpy_iterator())  # batched: element by element is ~40x slower
    if not batches:
        raise ValueError("dataset: expected at least one element. Received: an empty dataset")
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *batches)
