"""Class maps as pictures: a colour per class, blended over the photo, written as PNG.

:func:`segment_images` runs a segmentation model (a Keras model, a ``.keras`` file, or a
SavedModel written by :func:`hybrid_keras.export_saved_model`) on image files and writes, per
image, ``<name>_overlay.png`` (the photo with the class colours blended over it) and
``<name>_classes.png`` (the class map as a palette PNG whose pixel values are class indices,
so it reads back as labels). ``hybrid-keras segment`` is its command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def default_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours, each class its own: the bits of the class index spread
    over the three channels from the most significant bit down (the PASCAL VOC scheme)."""
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256]. Received: {num_classes}")
    palette = np.zeros((num_classes, 3), np.uint8)
    for index in range(num_classes):
        value, shift = index, 7
        while value:
            for channel in range(3):
                palette[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return palette


def colorize(class_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``[H, W]`` class indices -> ``[H, W, 3]`` uint8 colours."""
    class_map = np.asarray(class_map)
    if class_map.size and class_map.max() >= len(palette):
        raise ValueError(f"the class map has class {int(class_map.max())} but the palette has {len(palette)} colours")
    return np.asarray(palette, np.uint8)[class_map]


def blend(image: np.ndarray, class_map: np.ndarray, palette: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The photo ``[H, W, 3]`` with each pixel's class colour laid over it at ``opacity``."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]. Received: {opacity}")
    image = np.asarray(image, np.float32)
    if image.shape[:2] != np.shape(class_map):
        raise ValueError(f"image {image.shape[:2]} and class map {np.shape(class_map)} differ in size")
    mixed = (1.0 - opacity) * image[..., :3] + opacity * colorize(class_map, palette).astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def read_image(path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]``."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class _Segmenter:
    """Class maps from a Keras model or a SavedModel, for images of any size (resized to the
    model's size and the map resized back, nearest, when the model takes one size only)."""

    def __init__(self, model):
        self.saved_model = None
        if isinstance(model, (str, Path)) and (Path(model) / "saved_model.pb").exists():
            import tensorflow as tf

            self.saved_model = tf.saved_model.load(str(model)).signatures["serve_uint8"]
            shape = self.saved_model.structured_input_signature[1]["images"].shape
            self.size = tuple(shape[1:3]) if shape[1] is not None else None
            return
        if isinstance(model, (str, Path)):
            import keras

            path = Path(model)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such .keras file or SavedModel directory")
            model = keras.saving.load_model(path)
        from hybrid_keras.export import ends_in_probabilities, segmentation_classes

        if segmentation_classes(model) is None:
            raise ValueError(f"{model.name!r} is not a segmentation model (one output [B, H, W, classes] at the "
                             f"input's size); its output shape is {model.output_shape}")
        self.model = model
        self.probabilities_given = ends_in_probabilities(model)
        self.num_classes = int(model.output_shape[-1])
        height, width = model.input_shape[1:3]
        self.size = (height, width) if height is not None else None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        original = image.shape[:2]
        if self.size is not None and original != self.size:
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize(self.size[::-1], Image.BILINEAR))
        if self.saved_model is not None:
            import tensorflow as tf

            class_map = self.saved_model(images=tf.constant(image[None]))["class_map"].numpy()[0]
        else:
            class_map = np.argmax(np.asarray(self.model.predict(image[None].astype(np.float32), verbose=0))[0], -1)
        if class_map.shape != original:
            from PIL import Image

            class_map = np.asarray(Image.fromarray(class_map.astype(np.uint8)).resize(original[::-1], Image.NEAREST))
        return class_map.astype(np.uint8)


def segment_images(model, images, out_dir, *, palette=None, opacity: float = 0.5) -> list[Path]:
    """Segment image files and write ``<name>_overlay.png`` and ``<name>_classes.png`` for each.

    ``model``: a Keras segmentation model, a ``.keras`` file, or a SavedModel directory.
    ``palette``: ``[classes, 3]`` colours (default :func:`default_palette`). Returns the paths written.
    """
    from PIL import Image

    segmenter = _Segmenter(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = np.asarray(palette if palette is not None else default_palette(256), np.uint8)
    written = []
    for image_path in map(Path, images):
        image = read_image(image_path)
        class_map = segmenter(image)
        overlay_path = out_dir / f"{image_path.stem}_overlay.png"
        Image.fromarray(blend(image, class_map, colours, opacity)).save(overlay_path)
        classes = Image.frombytes("P", class_map.shape[::-1], np.ascontiguousarray(class_map).tobytes())
        classes.putpalette(np.resize(colours, (256, 3)).reshape(-1).tolist())
        classes_path = out_dir / f"{image_path.stem}_classes.png"
        classes.save(classes_path)
        written += [overlay_path, classes_path]
    return written
