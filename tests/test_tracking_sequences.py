"""Synthetic tracking sequences: the ground truth follows the camera exactly (pan: the photo's
pixels reappear inside the box; zoom and roll: the box scales and grows as computed by hand)."""

import numpy as np
import pytest

from hybrid_keras.tracking.sequences import camera_path, synthetic_sequence

pytestmark = pytest.mark.backend_agnostic  # NumPy and Pillow only

PHOTO = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
TARGET = (100, 80, 40, 30)  # centre (120, 95)
FRAME = (120, 160)


def test_pan_moves_the_box_and_its_pixels_exactly():
    offsets = np.array([[0, 0], [7, -3], [-12, 5]], float)
    camera = (np.array([120.0, 95.0]) + offsets, np.ones(3), np.zeros(3))
    sequence = synthetic_sequence(PHOTO, TARGET, frames=3, frame_size=FRAME, camera=camera)
    for t, (dx, dy) in enumerate(offsets):
        x, y, w, h = sequence.boxes[t]
        # Camera centre at (120 + dx, 95 + dy) shows the target's corner at (60 - dx, 45 - dy).
        np.testing.assert_allclose(sequence.boxes[t], [60 - dx, 45 - dy, 40, 30])
        np.testing.assert_array_equal(sequence.frames[t, int(y):int(y) + 30, int(x):int(x) + 40],
                                      PHOTO[80:110, 100:140])


def test_zoom_and_roll_change_the_box_as_computed():
    centre = np.array([[120.0, 95.0]])
    zoomed = synthetic_sequence(PHOTO, TARGET, frames=1, frame_size=FRAME, camera=(centre, np.array([2.0]), np.zeros(1)))
    np.testing.assert_allclose(zoomed.boxes[0], [80 - 10, 60 - 7.5, 20, 15])  # half the size, centred
    rolled = synthetic_sequence(PHOTO, TARGET, frames=1, frame_size=FRAME,
                                camera=(centre, np.ones(1), np.array([np.pi / 2])))
    np.testing.assert_allclose(rolled.boxes[0], [80 - 15, 60 - 20, 30, 40], atol=1e-9)  # a quarter turn


def test_generated_paths_keep_the_target_in_view_and_are_seeded():
    photo = np.random.default_rng(1).integers(0, 256, (321, 481, 3), dtype=np.uint8)
    first = synthetic_sequence(photo, (200, 120, 60, 50), frames=40, motion="all", seed=3,
                               blur_frames=range(10, 15), occlusion_frames=range(20, 25))
    again = synthetic_sequence(photo, (200, 120, 60, 50), frames=40, motion="all", seed=3)
    assert first.frames.shape == (40, 240, 320, 3) and first.boxes.shape == (40, 4)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    assert np.all(first.boxes[:, 2:] > 0)
    assert not np.array_equal(first.frames[12], again.frames[12])  # blurred
    x, y = first.boxes[22, :2].astype(int) + 1
    assert np.all(first.frames[22, y, x] == 128)  # occluded


def test_bad_input():
    with pytest.raises(ValueError, match="zero area"):
        synthetic_sequence(PHOTO, (10, 10, 0, 5))
    with pytest.raises(ValueError, match="outside"):
        synthetic_sequence(PHOTO, (400, 10, 5, 5))
    with pytest.raises(ValueError, match="uint8"):
        synthetic_sequence(PHOTO.astype(float), TARGET)
    with pytest.raises(ValueError, match="motion must be"):
        camera_path(TARGET, 5, FRAME, motion="shake")
    far = (np.array([[2000.0, 2000.0]]), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="leaves the frame"):
        synthetic_sequence(PHOTO, TARGET, frames=1, frame_size=FRAME, camera=far)
