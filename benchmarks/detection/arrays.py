"""Detection training data as NumPy arrays, for machines without TensorFlow (the GPU runs under
JAX) and for benchmarks that keep a small dataset in memory.

:func:`letterbox_numpy` resizes and pads an image (and its instance masks) the way
``hybrid_keras.detection.letterbox`` and ``detection_batches(masks=True)`` do it, with PIL;
:func:`flipped_batches` feeds ``model.fit`` shuffled batches mirrored left-right at random;
:func:`step_counter` counts the training batches (under JAX the optimizer's own counter is
synced only when training ends).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def letterbox_numpy(image: np.ndarray, size: int, masks: np.ndarray | None = None):
    """``(uint8 image [size, size, 3], uint8 0/1 masks [G, size, size] or None, scale, (height, width))``:
    resized with the aspect ratio kept (PIL bilinear, antialiased when shrinking; a mask is
    inside where its resized 0/255 value reaches half), zero padding below and to the right;
    ``(height, width)`` is the resized image's size inside the padding."""
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    resized = (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))
    out = np.zeros((size, size, 3), np.uint8)
    out[:resized[1], :resized[0]] = np.asarray(Image.fromarray(image).resize(resized, Image.BILINEAR))
    out_masks = None
    if masks is not None:
        out_masks = np.zeros((len(masks), size, size), np.uint8)
        for g, mask in enumerate(masks):
            shrunk = np.asarray(Image.fromarray(mask * np.uint8(255)).resize(resized, Image.BILINEAR))
            out_masks[g, :resized[1], :resized[0]] = shrunk >= 127.5
    return out, out_masks, scale, (resized[1], resized[0])


def flipped_batches(x, y, batch_size: int, seed: int):
    """A ``keras.utils.PyDataset`` of shuffled batches of ``(x [N, H, W, 3], y {"boxes" [N, G, 4]
    pixels, "labels" [N, G] with -1 padding, optionally "masks" [N, G, H, W]})``, each image
    mirrored left-right with probability 1/2 (boxes and masks follow)."""
    import keras

    class FlippedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return len(x) // batch_size

        def __getitem__(self, index):
            chosen = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            images, boxes, labels = x[chosen].copy(), y["boxes"][chosen].copy(), y["labels"][chosen]
            masks = y["masks"][chosen].copy() if "masks" in y else None
            width = images.shape[2]
            for i in np.flatnonzero(self.rng.random(len(chosen)) < 0.5):
                images[i] = images[i, :, ::-1]
                if masks is not None:
                    masks[i] = masks[i, :, :, ::-1]
                present = labels[i] >= 0
                boxes[i, present] = np.stack([width - boxes[i, present, 2], boxes[i, present, 1],
                                              width - boxes[i, present, 0], boxes[i, present, 3]], axis=-1)
            targets = {"boxes": boxes, "labels": labels}
            if masks is not None:
                targets["masks"] = masks
            return images, targets

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return FlippedBatches()


def step_counter():
    """A callback counting training batches (``counter.count``)."""
    import keras

    class StepCounter(keras.callbacks.Callback):
        count = 0

        def on_train_batch_end(self, batch, logs=None):
            self.count += 1

    return StepCounter()


def predict_numpy(model, images, size: int, batch_size: int):
    """A detection model's detections on photos of any size, letterboxed by :func:`letterbox_numpy`:
    ``(per photo {"boxes" [N, 4] pixel x1 y1 x2 y2, "scores", "labels" 0-based, and "masks"
    [N, H, W] booleans for a mask model}, seconds per photo of the forward pass)``. The forward
    pass is compiled for the full and the last batch's size before it is timed."""
    import time

    import keras

    from hybrid_keras.detection import paste_masks

    prepared = [letterbox_numpy(image, size) for image in images]
    x = np.stack([p[0] for p in prepared])
    for warm_up in {batch_size, len(x) % batch_size} - {0}:
        model.predict(x[:warm_up], verbose=0)
    start = time.perf_counter()
    outputs = model.predict(x, batch_size=batch_size, verbose=0)
    seconds = (time.perf_counter() - start) / len(x)
    outputs = {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
    detections = []
    for i, image in enumerate(images):
        count = int(outputs["num_detections"][i])
        height, width = image.shape[:2]
        resized_height, resized_width = prepared[i][3]
        # Normalised to the padded input -> normalised to the photo (restore_boxes' rule).
        yxyx = np.clip(outputs["detection_boxes"][i, :count] * np.array(
            [size / resized_height, size / resized_width] * 2), 0.0, 1.0)
        found = {"boxes": (yxyx * [height, width, height, width])[:, [1, 0, 3, 2]],
                 "scores": outputs["detection_scores"][i, :count],
                 "labels": outputs["detection_classes"][i, :count].astype(int) - 1}
        if "detection_masks" in outputs:
            found["masks"] = paste_masks(outputs["detection_masks"][i, :count], yxyx, height, width)
        detections.append(found)
    return detections, seconds
