"""Overlays of a segmentation model: the palette and blend by hand, and ``hybrid-keras segment``
on images of two sizes from a .keras file and from its SavedModel (the same class maps)."""

import numpy as np
import pytest
from PIL import Image

import zoo
from hybrid_keras import cli
from hybrid_keras.segmentation.overlay import blend, colorize, default_palette, segment_images

SMALL_MOBILENET = dict(backbone="mobilenet_v2", alpha=0.35)


def test_default_palette_is_the_voc_scheme():
    palette = default_palette(256)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[8].tolist() == [64, 0, 0]
    assert len({tuple(colour) for colour in palette}) == 256  # a colour per class


def test_blend_by_hand():
    image = np.full((1, 2, 3), 100, np.uint8)
    palette = np.array([[0, 0, 0], [200, 50, 0]], np.uint8)
    out = blend(image, np.array([[0, 1]]), palette, opacity=0.25)
    assert out.tolist() == [[[75, 75, 75], [125, 88, 75]]]  # 0.75 * 100 + 0.25 * colour, rounded
    with pytest.raises(ValueError, match="differ in size"):
        blend(image, np.zeros((2, 2), int), palette)
    with pytest.raises(ValueError, match="palette has 2 colours"):
        colorize(np.array([[2]]), palette)


@pytest.fixture(scope="module")
def trained_like_fcn(tmp_path_factory):
    """A small FCN-8s with random score layers (so its class map is not all one class), saved
    as .keras and exported, and two photos of different sizes."""
    import hybrid_keras as hk

    folder = tmp_path_factory.mktemp("segment")
    model = zoo.load("fcn8s", classes=4, **SMALL_MOBILENET)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.startswith("score_stride"):
            layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    model.save(folder / "fcn.keras")
    # Export verification has its own tests; here the command's class maps from the SavedModel
    # are compared with the .keras file's.
    saved = hk.export_saved_model(model, folder / "served" / "1", verify=False)
    photos = []
    for index, size in enumerate([(64, 96), (75, 53)]):
        photos.append(folder / f"photo{index}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(photos[-1])
    return model, folder / "fcn.keras", saved, photos


def test_segment_command_from_keras_file_and_saved_model(trained_like_fcn, tmp_path, capsys):
    model, keras_file, saved, photos = trained_like_fcn
    assert cli.main(["segment", str(keras_file), *map(str, photos), "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["segment", str(saved), *map(str, photos), "--out", str(tmp_path / "b"), "--palette", "camvid"]) == 0
    assert len(capsys.readouterr().out.split()) == 8
    for photo in photos:
        image = np.asarray(Image.open(photo))
        expected = np.asarray(model(image[None].astype("float32")))[0].argmax(-1)
        for folder in ("a", "b"):
            classes = Image.open(tmp_path / folder / f"{photo.stem}_classes.png")
            assert classes.mode == "P"
            np.testing.assert_array_equal(np.asarray(classes), expected)  # pixel values are the classes
        overlay = np.asarray(Image.open(tmp_path / "a" / f"{photo.stem}_overlay.png"))
        np.testing.assert_array_equal(overlay, blend(image, expected, default_palette(256)))


def test_segment_refuses_what_it_cannot_run(tmp_path, trained_like_fcn):
    photos = trained_like_fcn[3]
    with pytest.raises(SystemExit, match="--weights"):
        cli.main(["segment", "fcn8s", str(photos[0]), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="neither a file"):
        cli.main(["segment", "no_such_model", str(photos[0]), "--out", str(tmp_path)])
    classifier = zoo.load("mobilenet_v2", alpha=0.35, input_shape=(64, 64, 3), classes=3)
    with pytest.raises(ValueError, match="not a segmentation model"):
        segment_images(classifier, photos, tmp_path)
