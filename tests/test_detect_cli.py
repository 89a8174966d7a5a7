"""``hybrid-keras detect``: drawing by hand, the letterbox geometry back to the photo's pixels on
a model with known outputs, and the command on a .keras file and on its SavedModel (the same
detections)."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from hybrid_keras import cli
from hybrid_keras.detection import FasterRCNN
from hybrid_keras.detection.visualize import Detector, draw_detections
from hybrid_keras.layers import Preprocessing
from hybrid_keras.segmentation.overlay import default_palette

SIZE = 64


def test_draw_detections_by_hand():
    image = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((1, 40, 50), bool)
    mask[0, 30:38, 35:45] = True
    drawn = draw_detections(image, [[5, 16, 30, 34]], [2], [0.9], mask, class_names=["cat", "dog"])
    colour = default_palette(256)[2]  # class 2's colour, (0, 128, 0)
    assert drawn[25, 5].tolist() == colour.tolist() and drawn[34, 20].tolist() == colour.tolist()  # the outline
    assert drawn[25, 15].tolist() == [0, 0, 0]  # inside the box, no mask there
    assert drawn[35, 40].tolist() == np.rint(0.45 * colour).astype(int).tolist()  # the mask at opacity 0.45
    assert drawn[36, 2].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"masks must be \[N, H, W\] = \[1, 40, 50\]"):
        draw_detections(image, [[5, 16, 30, 34]], [2], masks=np.zeros((1, 20, 25), bool))
    with pytest.raises(ValueError, match="1-based"):
        draw_detections(image, [[5, 16, 30, 34]], [0])
    with pytest.raises(ValueError, match="one row per detection"):
        draw_detections(image, [[5, 16, 30, 34]], [1, 2])


@keras.saving.register_keras_serializable(package="test_detect_cli")
class _KnownDetections(keras.Model):
    """A stand-in detector whose outputs are fixed: two boxes on its 64x64 input."""

    task, rpn, image_shape = "detection", True, (SIZE, SIZE, 3)

    def call(self, images, training=False):
        batch = keras.ops.shape(images)[0]

        def tile(value):
            value = keras.ops.convert_to_tensor(np.asarray(value, np.float32))
            return keras.ops.broadcast_to(value, (batch, *value.shape))

        return {"detection_boxes": tile([[0.25, 0.5, 0.5, 1.0], [0.0, 0.0, 0.125, 0.25], [0, 0, 0, 0]]),
                "detection_scores": tile([0.9, 0.3, 0.0]), "detection_classes": tile([1.0, 3.0, 0.0]),
                "num_detections": tile(2.0)}


def test_boxes_come_back_in_the_photos_pixels():
    # A 32x128 photo is letterboxed into 64x64 at scale 1/2 (resized to 16x64, padded below): a
    # box at model pixels y 16..32, x 32..64 is photo pixels y 32..64 (past the photo: clipped
    # to 32), x 64..128; y 0..8, x 0..16 is y 0..16, x 0..32.
    found = Detector(_KnownDetections())(np.zeros((32, 128, 3), np.uint8))
    np.testing.assert_allclose(found["boxes"], [[64, 32, 128, 32], [0, 0, 32, 16]], atol=1e-4)
    np.testing.assert_allclose(found["scores"], [0.9, 0.3])
    assert found["classes"].tolist() == [1, 3] and "masks" not in found
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        Detector(_KnownDetections())(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="is not a detection model"):
        Detector(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


@keras.saving.register_keras_serializable(package="test_detect_cli")
class _KnownMasks(_KnownDetections):
    """The same, with a mask head whose masks cover the left half of each box."""

    def call(self, images, training=False):
        outputs = super().call(images, training)
        half = np.zeros((3, 28, 28), np.float32)
        half[:, :, :14] = 1.0
        outputs["detection_masks"] = keras.ops.broadcast_to(half, (keras.ops.shape(images)[0], 3, 28, 28))
        return outputs


def test_masks_are_pasted_into_the_photo():
    # The second box is normalised y 0..0.5, x 0..0.25 of a 32x128 photo. With corner-aligned
    # grids (photo row r at r / 31, column c at c / 127; mask cell i at i / 27 of the box) rows
    # r / 31 <= 0.5 are inside (r <= 15), and the half mask is above 0.5 up to cell 13.5, i.e.
    # c / 127 < 13.5 / 27 * 0.25 (c <= 15).
    found = Detector(_KnownMasks())(np.zeros((32, 128, 3), np.uint8))
    assert found["masks"].shape == (2, 32, 128) and found["masks"].dtype == bool
    expected = np.zeros((32, 128), bool)
    expected[:16, :16] = True
    np.testing.assert_array_equal(found["masks"][1], expected)


def test_rcnn_is_given_selective_search_proposals(tmp_path):
    # An R-CNN whose "SVM" scores the mean red of each crop: its best detection on a photo with
    # a red and a green rectangle lies inside the red one, and the command's detections are the
    # model's own on selective search's boxes, in the photo's pixels.
    from hybrid_keras.detection.proposals import selective_search
    from hybrid_keras.detection.rcnn import RCNN
    from tests.test_rcnn import _mean_colour_backbone, _two_rectangles

    photo, (red, _) = _two_rectangles()
    model = RCNN(_mean_colour_backbone(), 1, context=0.0, max_detections=6)
    model.svm.set_weights([np.float32([[0.01], [0.0], [0.0]]), np.float32([-1.0])])
    found = Detector(model)(photo)
    direct = model((photo[None].astype(np.float32), selective_search(photo)[None]))
    count = int(keras.ops.convert_to_numpy(direct["num_detections"])[0])
    yxyx = keras.ops.convert_to_numpy(direct["detection_boxes"])[0, :count] * [48, 64, 48, 64]
    np.testing.assert_allclose(found["boxes"], yxyx[:, [1, 0, 3, 2]], atol=1e-3)
    x1, y1, x2, y2 = found["boxes"][0]
    assert red[0] - 1 <= x1 < x2 <= red[2] + 1 and red[1] - 1 <= y1 < y2 <= red[3] + 1
    model.save(tmp_path / "rcnn.keras")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert cli.main(["detect", str(tmp_path / "rcnn.keras"), str(tmp_path / "photo.png"), "--out",
                     str(tmp_path / "out"), "--proposals", "fast"]) == 0
    listed = json.loads((tmp_path / "out" / "detections.json").read_text())["images"]
    np.testing.assert_allclose(listed[str(tmp_path / "photo.png")][0]["box"], found["boxes"][0], atol=0.01)


def _tiny_detector():
    images = keras.Input((SIZE, SIZE, 3))
    x = Preprocessing("tf")(images)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=4, padding="same", activation="relu")(x)
    return FasterRCNN(keras.Model(images, x), 2, image_shape=(SIZE, SIZE, 3), anchor_sizes=(16, 32),
                      representation_size=16, rpn_pre_nms_top_n=40, rpn_post_nms_top_n=20, detection_candidates=30,
                      max_detections=10, seed=1)


def test_detect_command_on_a_keras_file_and_its_saved_model(tmp_path, capsys):
    import hybrid_keras as hk

    model = _tiny_detector()
    model.save(tmp_path / "detector.keras")
    # The export's own verification is tested elsewhere; here both routes must give one answer.
    saved = hk.export_saved_model(model, tmp_path / "served" / "1", verify=False)
    rng = np.random.default_rng(0)
    photos = []
    for index, size in enumerate([(48, 80), (90, 60)]):
        photos.append(tmp_path / f"photo{index}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(photos[-1])
    reports = {}
    for route, source in (("keras", tmp_path / "detector.keras"), ("saved", saved)):
        assert cli.main(["detect", str(source), *map(str, photos), "--out", str(tmp_path / route),
                         "--threshold", "0", "--class-names", "raccoon,fox"]) == 0
        reports[route] = json.loads((tmp_path / route / "detections.json").read_text())["images"]
    assert len(capsys.readouterr().out.split()) == 6  # two PNGs and a JSON per route
    for photo in photos:
        keras_found, served = reports["keras"][str(photo)], reports["saved"][str(photo)]
        assert 0 < len(keras_found) == len(served) <= 10  # an untrained head scores about 1/3: above 0.05
        for a, b in zip(keras_found, served):
            np.testing.assert_allclose(a["box"], b["box"], atol=0.02)
            assert abs(a["score"] - b["score"]) < 1e-5 and a["class"] == b["class"]
            assert a["name"] == ("raccoon", "fox")[a["class"] - 1]
        drawn = Image.open(tmp_path / "keras" / f"{photo.stem}_detections.png")
        assert drawn.size == Image.open(photo).size


def test_detect_refuses_what_it_cannot_run(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(SystemExit, match="--weights"):
        cli.main(["detect", "faster_rcnn", str(photo), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="neither a file"):
        cli.main(["detect", str(tmp_path / "missing.keras"), str(photo), "--out", str(tmp_path)])
    model = tmp_path / "detector.keras"
    _tiny_detector().save(model)
    with pytest.raises(SystemExit, match=r"threshold must be in \[0, 1\]"):
        cli.main(["detect", str(model), str(photo), "--out", str(tmp_path), "--threshold", "2"])
