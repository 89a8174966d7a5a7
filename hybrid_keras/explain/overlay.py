"""Explanations as pictures: heat maps, overlays and side-by-side PNGs, and the file-level
:func:`explain_images` behind ``hybrid-keras explain``.

Each PNG is one row of panels: the image as the model saw it, then

- ``deconvnet``: the projection (grey is zero; brighter and darker are the signal's two signs,
  scaled by its largest magnitude, as Zeiler & Fergus display them);
- ``occlusion``: the class probability per occluder position (0 blue .. 1 yellow, viridis), and the
  drop in probability from the unoccluded image blended over the image (jet);
- ``gradcam``: the class activation map (jet, scaled to its maximum), and it blended over the image.

Small inputs (MNIST's 28x28) are enlarged by a whole factor (nearest) so that a panel is at
least ``min_panel`` pixels high.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

METHODS = ("deconvnet", "occlusion", "gradcam")


def scaled(values, low=None, high=None) -> np.ndarray:
    """``values`` mapped to [0, 1] between ``low`` and ``high`` (default: their min and max;
    a constant map becomes zeros)."""
    values = np.asarray(values, np.float64)
    low = values.min() if low is None else low
    high = values.max() if high is None else high
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def colorize(values01, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> ``[H, W, 3]`` uint8 colours of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[colormap](np.asarray(values01))[..., :3] * 255.0 + 0.5).astype(np.uint8)


def as_rgb(image) -> np.ndarray:
    """An image ``[H, W, C]`` (C = 1 or 3, values in [0, 255]) as uint8 RGB."""
    image = np.clip(np.rint(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] != 3:
        raise ValueError(f"image must have 1 or 3 channels. Received: shape {image.shape}")
    return image


def heatmap_overlay(image, heat, *, opacity: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """The image with ``heat`` (``[H, W]``, scaled to its range) in colour blended over it."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1]. Received: opacity={opacity}")
    image = as_rgb(image)
    if image.shape[:2] != np.shape(heat):
        raise ValueError(f"heat {np.shape(heat)} must be the image's size {image.shape[:2]}")
    mixed = (1.0 - opacity) * image + opacity * colorize(scaled(heat), colormap).astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def projection_image(pixels) -> np.ndarray:
    """A deconvnet projection ``[H, W, C]`` as uint8 RGB: ``128 + 127 * p / max|p|``."""
    pixels = np.asarray(pixels, np.float64)
    peak = np.abs(pixels).max()
    return as_rgb(128.0 + 127.0 * (pixels / peak if peak > 0 else pixels))


def side_by_side(panels, titles=None, *, min_panel: int = 160, gap: int = 4) -> np.ndarray:
    """Equal-size RGB panels in one row, enlarged (nearest) to at least ``min_panel`` pixels
    high, with a title line above each."""
    from PIL import Image, ImageDraw

    panels = [as_rgb(p) for p in panels]
    height, width = panels[0].shape[:2]
    if any(p.shape[:2] != (height, width) for p in panels):
        raise ValueError(f"panels must share one size. Received: {[p.shape[:2] for p in panels]}")
    factor = max(1, -(-min_panel // height))
    title_height = 14 if titles else 0
    canvas = Image.new("RGB", (len(panels) * (width * factor + gap) - gap, height * factor + title_height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, panel in enumerate(panels):
        left = index * (width * factor + gap)
        big = Image.fromarray(panel).resize((width * factor, height * factor), Image.NEAREST)
        canvas.paste(big, (left, title_height))
        if titles:
            draw.text((left + 2, 1), str(titles[index]), fill="black")
    return np.asarray(canvas)


def write_png(path, image) -> Path:
    """Write ``image`` (uint8 ``[H, W, 3]``) as PNG atomically: staged beside it, then renamed."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        Image.fromarray(np.asarray(image, np.uint8)).save(staged, format="PNG")
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return path


def read_images(paths, size=None, channels: int = 3) -> np.ndarray:
    """Image files as float32 ``[N, H, W, channels]`` raw pixels (RGB or grey), resized
    (bilinear) to ``size`` = (H, W) when given; without it all files must share one size."""
    from PIL import Image

    arrays = []
    for path in map(Path, paths):
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, np.float32)
        arrays.append(array[..., None] if array.ndim == 2 else array)
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images of different sizes need a model with a fixed input size. Received: "
                         f"{sorted({a.shape[:2] for a in arrays})}")
    return np.stack(arrays)


def explanation_panels(method: str, image, result, index: int):
    """The panels and titles of one image's PNG (see the module docstring)."""
    if method == "deconvnet":
        return ([image, projection_image(result.pixels[index])],
                ["image", f"{result.rule} {result.layer} map {int(result.channels[index])}"])
    if method == "occlusion":
        drop = np.maximum(result.probability[index] - result.heatmap[index], 0.0)
        probability = colorize(scaled(result.heatmap[index], 0.0, 1.0), "viridis")
        return ([image, probability, heatmap_overlay(image, drop)],
                ["image", f"p(class {int(result.class_index[index])})", "probability drop"])
    if method == "gradcam":
        return ([image, colorize(scaled(result.heatmap[index])), heatmap_overlay(image, result.heatmap[index])],
                ["image", f"Grad-CAM {result.layer}", f"class {int(result.class_index[index])}"])
    raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")


def explain(model, images, method: str, *, layer: str | None = None, class_index=None, channel: int | None = None,
            top_k: int | None = 1, rule: str = "deconvnet", size: int | None = None, stride: int | None = None,
            fill=None):
    """Run one method (:data:`METHODS`) on a batch; ``layer`` defaults to the last feature map."""
    from hybrid_keras.explain.methods import deconvnet, default_cam_layer, grad_cam, occlusion

    if method == "deconvnet":
        return deconvnet(model, images, layer or default_cam_layer(model), channel=channel, top_k=top_k, rule=rule)
    if method == "occlusion":
        return occlusion(model, images, size=size, stride=stride, fill=fill, class_index=class_index)
    if method == "gradcam":
        return grad_cam(model, images, layer=layer, class_index=class_index)
    raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")


def _summary(method, result, index):
    if method == "deconvnet":
        return {"layer": result.layer, "rule": result.rule, "channel": int(result.channels[index])}
    if method == "occlusion":
        return {"class_index": int(result.class_index[index]), "probability": float(result.probability[index]),
                "lowest_probability": float(result.grid[index].min()), "size": result.size, "stride": result.stride}
    return {"layer": result.layer, "class_index": int(result.class_index[index])}


def explain_images(model, image_paths, out_dir, method: str = "gradcam", **options) -> list[Path]:
    """Explain image files with ``method`` and write ``<name>_<method>.png`` per image into
    ``out_dir``, and ``explain_<method>.json`` (per image: layer, class, map, probability).

    ``model``: a Keras model or a ``.keras`` file. Images are read as the model's channels
    (grey or RGB) and resized (bilinear) to its input size when it has a fixed one.
    ``options``: :func:`explain`'s. Returns the paths written.
    """
    import keras

    import hybrid_keras.layers  # noqa: F401  (registers the zoo's layers, so .keras files of zoo models load)

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")
    if isinstance(model, (str, Path)):
        path = Path(model)
        if (path / "saved_model.pb").exists():
            raise ValueError(f"model must be a Keras model or .keras file: a SavedModel has no layers to explain. "
                             f"Received: {path}")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .keras file")
        model = keras.saving.load_model(path)
    height, width, channels = model.inputs[0].shape[1:]
    image_paths = [Path(p) for p in image_paths]
    fixed = height is not None and width is not None
    groups = [image_paths] if fixed else [[p] for p in image_paths]
    out_dir = Path(out_dir)
    written, summary = [], {}
    for group in groups:
        images = read_images(group, (height, width) if fixed else None, channels or 3)
        result = explain(model, images, method, **options)
        for index, path in enumerate(group):
            panels, titles = explanation_panels(method, images[index], result, index)
            written.append(write_png(out_dir / f"{path.stem}_{method}.png", side_by_side(panels, titles)))
            summary[str(path)] = {"png": str(written[-1]), **_summary(method, result, index)}
    summary_path = out_dir / f"explain_{method}.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return written + [summary_path]
