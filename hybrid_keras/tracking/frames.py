"""Frames in and pictures out for trackers: read a folder of frames, draw boxes on a strip of
frames (the ``hybrid-keras track`` command's output and the benchmark's figures), and track
a folder end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Distinct on photos; the ground truth, when drawn, is dashed lime.
COLOURS = ((255, 48, 48), (0, 191, 255), (255, 165, 0), (255, 0, 255), (255, 255, 0), (255, 255, 255))
TRUTH_COLOUR = (50, 205, 50)


def read_frames(folder) -> tuple[np.ndarray, list[Path]]:
    """The image files of ``folder`` in name order (``frame_0001.png`` ...) as uint8 RGB
    ``[T, H, W, 3]``, and their paths. Every frame must have the first one's size."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of frames")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder} holds no frames (image files ending in {', '.join(FRAME_SUFFIXES)})")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    sizes = {f.shape for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"the frames in {folder} differ in size: {sorted(sizes)}")
    return np.stack(frames), paths


def _rectangle(draw, box, colour, dashed: bool, width: int = 2):
    x, y, w, h = (float(v) for v in box)
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        if not dashed:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=width)
            continue
        length = max(abs(x1 - x0), abs(y1 - y0))
        for start in np.arange(0.0, length, 8.0):
            a, b = start / max(length, 1e-9), min(start + 4.0, length) / max(length, 1e-9)
            draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                      fill=colour, width=width)


def draw_strip(frames, boxes_by_name: Mapping[str, np.ndarray], path, *, count: int = 8, truth=None,
               scores=None, title: str = "") -> Path:
    """A PNG of ``count`` evenly spaced frames side by side, each with every tracker's box
    (``boxes_by_name``: ``{name: [T, 4]}``) and, if given, the ground truth dashed; a legend
    and ``title`` below. ``scores`` (``[T]``, for a single tracker) are printed on the frames."""
    from PIL import Image, ImageDraw

    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1. Received: shape {frames.shape}")
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    height, width = frames.shape[1:3]
    gap, legend = 4, 22
    sheet = Image.new("RGB", (len(picks) * (width + gap) - gap, height + legend), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    named = list(boxes_by_name.items())
    for i, t in enumerate(picks):
        left = i * (width + gap)
        sheet.paste(Image.fromarray(frames[t]), (left, 0))
        if truth is not None:
            _rectangle(draw, np.asarray(truth)[t] + [left, 0, 0, 0], TRUTH_COLOUR, dashed=True)
        for k, (_, boxes) in enumerate(named):
            _rectangle(draw, np.asarray(boxes, np.float64)[t] + [left, 0, 0, 0], COLOURS[k % len(COLOURS)], dashed=False)
        label = f"#{t}" + (f"  {float(scores[t]):.2f}" if scores is not None else "")
        draw.text((left + 3, 2), label, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    x = 4
    entries = ([("ground truth", TRUTH_COLOUR)] if truth is not None else []) + [
        (name, COLOURS[k % len(COLOURS)]) for k, (name, _) in enumerate(named)]
    for name, colour in entries:
        draw.rectangle([x, height + 7, x + 14, height + 15], outline=colour, width=2)
        draw.text((x + 18, height + 5), name, fill=(255, 255, 255))
        x += 26 + int(draw.textlength(name))
    if title:
        draw.text((max(x + 10, sheet.width - int(draw.textlength(title)) - 4), height + 5), title, fill=(200, 200, 200))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def track_folder(tracker, folder, box, out_dir, *, strip_frames: int = 8) -> dict:
    """Track the target ``box`` ``[x, y, w, h]`` (in the first frame) through the frames of ``folder``
    with ``tracker`` (``init``/``update``, e.g. a :class:`hybrid_keras.tracking.SiameseTracker`).

    Writes ``boxes.csv`` (``frame,x,y,w,h,score``; frame 0 is the given box) and ``strip.png``
    (``strip_frames`` annotated frames) into ``out_dir``; returns their paths, the boxes and scores.
    """
    from hybrid_keras.tracking.metrics import check_boxes

    frames, paths = read_frames(folder)
    box = check_boxes(box, "the target box", frame_size=frames.shape[1:3])[0]
    tracker.init(frames[0], box)
    boxes, scores = [box], [1.0]
    for frame in frames[1:]:
        new_box, score = tracker.update(frame)
        boxes.append(np.asarray(new_box, np.float64))
        scores.append(float(score))
    boxes, scores = np.stack(boxes), np.asarray(scores)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "boxes.csv"
    with open(table, "w") as f:
        f.write("frame,file,x,y,w,h,score\n")
        for t, (p, b, s) in enumerate(zip(paths, boxes, scores)):
            f.write(f"{t},{p.name},{b[0]:.2f},{b[1]:.2f},{b[2]:.2f},{b[3]:.2f},{s:.4f}\n")
    strip = draw_strip(frames, {"tracker": boxes}, out_dir / "strip.png", count=strip_frames, scores=scores,
                       title=Path(folder).name)
    return {"boxes_csv": table, "strip": strip, "boxes": boxes, "scores": scores}
