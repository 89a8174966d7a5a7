"""From TFDS detection examples to the batches Fast/Faster R-CNN train on (``tf.data``).

The models take one fixed input size. :func:`letterbox` resizes an image so that it fits
that size with its aspect ratio kept (the longer side, relative to the target, fills it) and
pads the bottom and right with zeros; boxes scale with the image and stay where they were
relative to the top-left corner, so :func:`restore_boxes` maps the model's normalised boxes
back onto the original image.

:func:`detection_batches` turns examples with TFDS's detection features (``image`` uint8
``[H, W, 3]``, ``objects/bbox`` normalised ``[ymin, xmin, ymax, xmax]``, ``objects/label``
0-based, as ``coco/2017``, ``voc`` and this project's ``raccoon`` and ``coco128`` give them)
into ``(images uint8 [B, H, W, 3], {"boxes": float32 [B, G, 4] pixel [x1, y1, x2, y2],
"labels": int32 [B, G]})`` with ``-1`` labels (and zero boxes) on padding rows.

With ``masks=True`` (Mask R-CNN), the examples' instance masks ``objects/segmentation``
(uint8 ``[N, H, W, 1]``, nonzero inside, the image's height and width: TFDS's ``lvis`` and
this project's ``coco128`` ``instances`` config) are letterboxed like the image (the same
resizing and padding; a resized mask is inside where it reaches half of 255) and come as
``y["masks"]`` uint8 0/1 ``[B, G, H, W]``, one per box row, zeros on padding rows. A
segmentation feature of the wrong rank or channels is a ``ValueError`` when the pipeline is
built; masks of another height or width than their image, or another count than the labels,
are a ``tf.errors.InvalidArgumentError`` while reading (a ``ValueError`` where the shapes are
static).

Checks, while the data is read (a ``tf.errors.InvalidArgumentError`` naming the problem):
boxes with ``ymax < ymin`` or ``xmax < xmin``, labels outside ``[0, classes)``, more than
``max_boxes`` objects in one image, images without 3 channels (known from the dataset's
spec, this one is a ``ValueError`` when the pipeline is built). Documented clipping, not an
error: box coordinates outside [0, 1] are clipped to the image, and boxes that end up less
than one pixel high or wide after resizing are dropped (treated as padding), since no anchor
or proposal can overlap them.

TensorFlow is imported inside the functions (this is an input pipeline, TensorFlow by nature).
"""

from __future__ import annotations


def _check_size(image_size):
    if len(image_size) < 2 or min(int(s) for s in image_size[:2]) < 1:
        raise ValueError(f"image_size must be (height, width) of positive ints. Received: image_size={image_size!r}")
    return int(image_size[0]), int(image_size[1])


def letterbox(images, image_size):
    """Resize ``images`` (``[H, W, C]`` or ``[B, H, W, C]``, one size) to fit ``image_size =
    (height, width)`` with the aspect ratio kept, then zero-pad the bottom and right.

    Returns ``(float32 images of image_size with whole values in [0, 255], resized (height,
    width) int32)``: resizing is bilinear and antialiased, rounded as a uint8 image would be.
    """
    import tensorflow as tf

    height, width = _check_size(image_size)
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    source = tf.cast(shape[-3:-1], tf.float32)
    scale = tf.minimum(height / source[0], width / source[1])
    resized_size = tf.cast(tf.clip_by_value(tf.round(source * scale), 1.0, [float(height), float(width)]), tf.int32)
    resized = tf.image.resize(tf.cast(images, tf.float32), resized_size, method="bilinear", antialias=True)
    resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    return tf.image.pad_to_bounding_box(resized, 0, 0, height, width), resized_size


def restore_boxes(boxes, resized_size, image_size):
    """The model's normalised ``[ymin, xmin, ymax, xmax]`` boxes (relative to its padded input of
    ``image_size``) -> normalised to the original image that :func:`letterbox` resized to
    ``resized_size`` (``[2]`` or ``[B, 2]``, for ``boxes [B, M, 4]``), clipped to [0, 1]."""
    import tensorflow as tf

    height, width = _check_size(image_size)
    resized = tf.reshape(tf.cast(resized_size, tf.float32), (-1, 1, 2))
    along_y, along_x = height / resized[..., 0], width / resized[..., 1]  # [B or 1, 1]
    factors = tf.stack([along_y, along_x, along_y, along_x], axis=-1)
    return tf.clip_by_value(tf.cast(boxes, tf.float32) * factors, 0.0, 1.0)


def _check_segmentation_spec(shape, image_shape, name: str) -> None:
    """A ``ValueError`` unless ``shape`` can be ``[N, H, W, 1]`` with the image's ``H, W``."""
    if shape.rank is not None and (shape.rank != 4 or shape[-1] not in (None, 1)):
        raise ValueError(f"{name} must be instance masks [N, H, W, 1] (uint8, the image's height and width). "
                         f"Received: shape {shape}")
    if shape.rank == 4 and image_shape.rank == 3:
        for axis, (mask_side, image_side) in enumerate(zip(shape[1:3], image_shape[:2])):
            if mask_side is not None and image_side is not None and mask_side != image_side:
                raise ValueError(f"{name} must have the image's height and width {tuple(image_shape[:2])}. Received: "
                                 f"shape {shape}")


def detection_example(example, *, image_size, classes: int, max_boxes: int = 100, image_key: str = "image",
                      objects_key: str = "objects", masks: bool = False):
    """One TFDS example -> ``(uint8 image [H, W, 3], {"boxes": [G, 4], "labels": [G]})``, plus
    ``"masks" [G, H, W]`` with ``masks=True`` (see the module)."""
    import tensorflow as tf

    height, width = _check_size(image_size)
    image = example[image_key]
    if image.shape.rank is not None and (image.shape.rank != 3 or image.shape[-1] not in (None, 3)):
        raise ValueError(f"{image_key} must be RGB images [H, W, 3] (convert grayscale with "
                         f"tf.image.grayscale_to_rgb). Received: shape {image.shape}")
    objects = example[objects_key]
    bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4))
    labels = tf.reshape(tf.cast(objects["label"], tf.int32), (-1,))
    checks = [
        tf.debugging.assert_equal(tf.shape(image)[-1], 3, message=f"{image_key} must have 3 channels (RGB)"),
        tf.debugging.assert_less_equal(tf.shape(labels)[0], max_boxes,
                                       message=f"an image has more objects than max_boxes={max_boxes}; raise it"),
        tf.debugging.assert_greater_equal(bbox[:, 2:], bbox[:, :2],
                                          message=f"{objects_key}/bbox must be [ymin, xmin, ymax, xmax] with ymax >= "
                                                  "ymin and xmax >= xmin; received boxes"),
        tf.debugging.assert_greater_equal(labels, 0, message=f"{objects_key}/label must be in [0, {classes})"),
        tf.debugging.assert_less(labels, classes, message=f"{objects_key}/label must be in [0, {classes})"),
    ]
    if masks:
        name = f"{objects_key}/segmentation"
        if "segmentation" not in objects:
            raise ValueError(f"masks=True needs {name} (instance masks [N, H, W, 1]). Received: {objects_key} with "
                             f"keys {sorted(objects)}")
        segmentation = tf.convert_to_tensor(objects["segmentation"])
        _check_segmentation_spec(segmentation.shape, image.shape, name)
        checks += [
            tf.debugging.assert_equal(tf.shape(segmentation)[1:3], tf.shape(image)[:2],
                                      message=f"{name} must have the image's height and width"),
            tf.debugging.assert_equal(tf.shape(segmentation)[0], tf.shape(labels)[0],
                                      message=f"{name} must have one mask per {objects_key}/label"),
        ]
    with tf.control_dependencies(checks):
        padded, resized_size = letterbox(image, (height, width))
    scale = tf.cast(tf.stack([resized_size[1], resized_size[0], resized_size[1], resized_size[0]]), tf.float32)
    bbox = tf.clip_by_value(bbox, 0.0, 1.0)
    boxes = tf.stack([bbox[:, 1], bbox[:, 0], bbox[:, 3], bbox[:, 2]], axis=1) * scale
    visible = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
    boxes, labels = tf.boolean_mask(boxes, visible), tf.boolean_mask(labels, visible)
    pad = max_boxes - tf.shape(labels)[0]
    boxes = tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), (max_boxes, 4))
    labels = tf.ensure_shape(tf.pad(labels, [[0, pad]], constant_values=-1), (max_boxes,))
    targets = {"boxes": boxes, "labels": labels}
    if masks:
        inside = tf.cast(tf.reshape(segmentation, tf.concat([tf.shape(segmentation)[:3], [1]], 0)) > 0, tf.uint8)
        letterboxed, _ = letterbox(inside * 255, (height, width))  # the image's resizing and padding
        letterboxed = tf.boolean_mask(tf.cast(letterboxed[..., 0] >= 127.5, tf.uint8), visible)
        targets["masks"] = tf.ensure_shape(tf.pad(letterboxed, [[0, pad], [0, 0], [0, 0]]), (max_boxes, height, width))
    return tf.cast(padded, tf.uint8), targets


def detection_batches(dataset, *, image_size, batch_size: int, classes: int, max_boxes: int = 100,
                      shuffle: int = 0, seed=None, drop_remainder: bool = True, repeat: bool = False,
                      image_key: str = "image", objects_key: str = "objects", masks: bool = False):
    """A TFDS split of detection examples -> ``model.fit`` batches (see the module).

    ``shuffle``: a buffer size (0: keep the order). ``drop_remainder`` keeps every batch
    the same size (static shapes train faster). ``repeat``: loop forever (use with
    ``steps_per_epoch``).
    """
    import tensorflow as tf

    _check_size(image_size)
    for name, value in (("batch_size", batch_size), ("classes", classes), ("max_boxes", max_boxes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
    spec = dataset.element_spec
    if not isinstance(spec, dict) or image_key not in spec or objects_key not in spec:
        raise ValueError(f"dataset must yield TFDS example dicts with {image_key!r} and {objects_key!r} "
                         f"({objects_key}/bbox, {objects_key}/label). Received: element_spec {spec}")
    image_spec = spec[image_key]
    if image_spec.shape.rank is not None and (image_spec.shape.rank != 3 or image_spec.shape[-1] not in (None, 3)):
        raise ValueError(f"{image_key} must be RGB images [H, W, 3] (convert grayscale with "
                         f"tf.image.grayscale_to_rgb). Received: shape {image_spec.shape}")
    if masks:
        objects_spec = spec[objects_key]
        if not isinstance(objects_spec, dict) or "segmentation" not in objects_spec:
            raise ValueError(f"masks=True needs {objects_key}/segmentation (instance masks [N, H, W, 1]). Received: "
                             f"element_spec {spec}")
        _check_segmentation_spec(objects_spec["segmentation"].shape, image_spec.shape, f"{objects_key}/segmentation")

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent Python control flow: skip autograph's slow rewrite
    def convert(example):
        return detection_example(example, image_size=image_size, classes=classes, max_boxes=max_boxes,
                                 image_key=image_key, objects_key=objects_key, masks=masks)

    if shuffle:
        dataset = dataset.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
