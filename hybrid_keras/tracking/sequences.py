"""Tracking sequences with exact ground truth, made from still photos.

No tracking benchmark can be downloaded here, so a sequence is a virtual camera moving over
a real photo (the staged BSDS500 or COCO128 images): every frame is the photo seen through
a similarity transform (pan, zoom, roll), and the target, a box on the photo (an annotated
COCO object, say), is mapped through the same transform, so its box in every frame is known
exactly (the axis-aligned box around its mapped corners, clipped to the frame). Optional
motion blur and a partial occluder over some frames make it harder.

The camera follows the target loosely: its centre is the target's plus a smooth random
offset (a sum of slow sinusoids), so the target wanders across the frame; zoom and roll
follow sinusoids too. ``camera=`` takes an explicit path instead (tests use it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

MOTIONS = ("pan", "zoom", "roll", "all")


@dataclasses.dataclass
class Sequence:
    """``frames`` uint8 ``[T, H, W, 3]`` and the target's ``boxes`` ``[T, 4]`` (``[x, y, w, h]``)."""

    frames: np.ndarray
    boxes: np.ndarray
    name: str = ""


def _smooth(rng, frames: int, amplitude: float, periods=(0.5, 1.3, 2.9)) -> np.ndarray:
    """A smooth path of ``frames`` values within about +-amplitude: random-phase sinusoids."""
    t = np.linspace(0.0, 1.0, frames)
    weights = rng.uniform(0.5, 1.0, len(periods))
    path = sum(w * np.sin(2 * np.pi * p * t + rng.uniform(0, 2 * np.pi)) for w, p in zip(weights, periods))
    return amplitude * path / weights.sum()


def camera_path(target_box, frames: int, frame_size, motion: str = "all", seed: int = 0):
    """``(centres [T, 2], scales [T], angles [T])``: where the camera looks on the photo, how many
    photo pixels one frame pixel spans, and its roll in radians."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}. Received: motion={motion!r}")
    rng = np.random.default_rng(seed)
    x, y, w, h = np.asarray(target_box, np.float64)
    height, width = frame_size
    centres = np.tile([x + w / 2, y + h / 2], (frames, 1))
    if motion in ("pan", "all"):
        centres[:, 0] += _smooth(rng, frames, 0.25 * width)
        centres[:, 1] += _smooth(rng, frames, 0.25 * height)
    scales = np.exp(_smooth(rng, frames, 0.4)) if motion in ("zoom", "all") else np.ones(frames)
    angles = _smooth(rng, frames, np.deg2rad(20)) if motion in ("roll", "all") else np.zeros(frames)
    return centres, scales, angles


def _frame_to_photo(centre, scale, angle, frame_size):
    """The 2x3 affine map from frame pixel coordinates to photo coordinates."""
    height, width = frame_size
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    rotation = np.array([[c, -s], [s, c]])
    offset = np.asarray(centre) - rotation @ np.array([width / 2, height / 2])
    return np.hstack([rotation, offset[:, None]])


def synthetic_sequence(photo, target_box, *, frames: int = 60, frame_size=(240, 320), motion: str = "all",
                       camera=None, blur_frames=None, occlusion_frames=None, seed: int = 0,
                       name: str = "") -> Sequence:
    """Render a sequence over ``photo`` (uint8 ``[H, W, 3]``) following ``target_box`` (``[x, y, w, h]``
    on the photo).

    ``camera``: an explicit ``(centres, scales, angles)`` path (see :func:`camera_path`).
    ``blur_frames``: a range of frames with horizontal motion blur; ``occlusion_frames``: a
    range of frames in which a grey block hides the target's left half. Ground truth is the
    target's box in each frame, clipped to the frame; a frame where the target has left the
    frame entirely is an error (choose a gentler path).
    """
    from PIL import Image, ImageFilter

    from hybrid_keras.tracking.metrics import check_boxes

    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be uint8 [H, W, 3]. Received: {photo.dtype} {photo.shape}")
    target = check_boxes(target_box, "target_box", frame_size=photo.shape[:2])[0]
    if frames < 1:
        raise ValueError(f"frames must be >= 1. Received: frames={frames}")
    height, width = frame_size
    centres, scales, angles = camera if camera is not None else camera_path(target, frames, frame_size, motion, seed)
    if not len(centres) == len(scales) == len(angles) == frames:
        raise ValueError(f"the camera path must have {frames} entries")
    source = Image.fromarray(photo)
    x, y, w, h = target
    corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]])
    out_frames, boxes = np.zeros((frames, height, width, 3), np.uint8), np.zeros((frames, 4))
    for t in range(frames):
        forward = _frame_to_photo(centres[t], scales[t], angles[t], frame_size)
        image = source.transform((width, height), Image.AFFINE, data=tuple(forward.reshape(-1)),
                                 resample=Image.BILINEAR)
        inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
        mapped = corners @ inverse[:, :2].T + inverse[:, 2]
        left, top = np.clip(mapped.min(0), 0, [width, height])
        right, bottom = np.clip(mapped.max(0), 0, [width, height])
        if right - left <= 0 or bottom - top <= 0:
            raise ValueError(f"the target leaves the frame at frame {t}; choose a gentler camera path")
        boxes[t] = [left, top, right - left, bottom - top]
        if blur_frames is not None and t in blur_frames:
            image = image.filter(ImageFilter.BoxBlur(3))
        frame = np.asarray(image).copy()
        if occlusion_frames is not None and t in occlusion_frames:
            frame[int(top):int(np.ceil(bottom)), int(left):int(left + (right - left) / 2)] = 128
        out_frames[t] = frame
    return Sequence(out_frames, boxes, name)
