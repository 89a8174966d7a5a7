"""The OTB measures against hand-computed overlaps and centre errors, and bad boxes."""

import numpy as np
import pytest

from hybrid_keras.tracking import box_iou, centre_errors, check_boxes, precision_curve, success_curve, tracking_scores

pytestmark = pytest.mark.backend_agnostic  # NumPy only

TRUTH = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
# Frame 0: exact. Frame 1: shifted 5 right, so 50 of 150 pixels overlap. Frame 2: disjoint, 30 px away.
PREDICTED = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [30, 0, 10, 10]], float)


def test_overlaps_and_centre_errors_by_hand():
    np.testing.assert_allclose(box_iou(PREDICTED, TRUTH), [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(centre_errors(PREDICTED, TRUTH), [0.0, 5.0, 30.0])
    # A box inside another: 4 / 100.
    assert box_iou([[2, 2, 2, 2]], [[0, 0, 10, 10]])[0] == pytest.approx(0.04)


def test_success_and_precision_by_hand():
    success = success_curve(PREDICTED, TRUTH)
    # Overlaps 1, 1/3, 0: above 0 -> 2 of 3 frames; above 0.05 ... 0.3 -> 2; above 0.35 ... 0.95 -> 1; above 1 -> 0.
    expected = np.array([2 / 3] * 7 + [1 / 3] * 13 + [0.0])
    np.testing.assert_allclose(success, expected)
    precision = precision_curve(PREDICTED, TRUTH)
    assert precision[0] == pytest.approx(1 / 3) and precision[4] == pytest.approx(1 / 3)
    assert precision[5] == pytest.approx(2 / 3) and precision[20] == pytest.approx(2 / 3) and precision[30] == 1.0
    scores = tracking_scores(PREDICTED, TRUTH)
    assert scores["success_auc"] == pytest.approx(expected.mean())
    assert scores["precision_at_20"] == pytest.approx(2 / 3)
    assert scores["mean_iou"] == pytest.approx((1 + 1 / 3) / 3)


def test_bad_boxes():
    with pytest.raises(ValueError, match="zero area"):
        check_boxes([[0, 0, 0, 5]])
    with pytest.raises(ValueError, match="outside the 20x10 frame"):
        check_boxes([[25, 0, 5, 5]], frame_size=(10, 20))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        check_boxes(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        check_boxes([[0, np.nan, 1, 1]])
    with pytest.raises(ValueError, match="empty sequence"):
        box_iou(np.zeros((0, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="2 predicted boxes for 3"):
        success_curve(PREDICTED[:2], TRUTH)
