"""FCN-32s/16s/8s: bilinear upsampling against its closed form, output sizes for odd inputs,
skip fusion against a hand-built NumPy network, the paper's VGG16 layout and its fc6/fc7
from classifier weights, training steps, the CRF option, round trips and bad input."""

import keras
import numpy as np
import pytest
from keras import ops

import zoo
from hybrid_keras.layers import BilinearUpsampling, CropToReference, DenseCRF, ReplicatePadding, find_preprocessing
from hybrid_keras.segmentation import SegmentationCrossentropy
from zoo.architectures.fcn import convolutionize, crop_offset

agnostic = pytest.mark.backend_agnostic
SMALL_MOBILENET = dict(backbone="mobilenet_v2", alpha=0.35)


def _numpy(x):
    return ops.convert_to_numpy(x)


def _compiled(fn):
    """``fn`` giving NumPy; under JAX jitted: one XLA compilation instead of one per operation.
    TensorFlow and PyTorch call it eagerly."""
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(fn)
        return lambda *args: np.asarray(jitted(*args))
    return lambda *args: _numpy(fn(*args))


# ---------------------------------------------------------------------- upsampling

@agnostic
def test_bilinear_kernel_is_the_closed_form():
    kernel = _numpy(BilinearUpsampling()((4, 4, 3, 3)))
    ramp = np.array([0.25, 0.75, 0.75, 0.25])  # factor 2: 1 - |i - 1.5| / 2
    for c in range(3):
        np.testing.assert_allclose(kernel[:, :, c, c], np.outer(ramp, ramp), atol=1e-7)
    off_diagonal = kernel.copy()
    off_diagonal[:, :, range(3), range(3)] = 0
    assert not off_diagonal.any()
    wide = _numpy(BilinearUpsampling()((16, 16, 1, 1)))[:, :, 0, 0]  # factor 8, centre 7.5
    np.testing.assert_allclose(wide[3, 10], (1 - 4.5 / 8) * (1 - 2.5 / 8), atol=1e-7)
    odd = _numpy(BilinearUpsampling()((3, 3, 1, 1)))[:, :, 0, 0]  # factor 2, centre 1
    np.testing.assert_allclose(odd, np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]), atol=1e-7)
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 4, 3, 2\)"):
        BilinearUpsampling()((4, 4, 3, 2))


def _interpolate(coarse, factor, size):
    """Clamped bilinear interpolation from cell centres i f + (f - 1) / 2 (max-pooling geometry) to pixels."""
    centres = [np.arange(n) * factor + (factor - 1) / 2 for n in coarse.shape[:2]]
    rows = np.stack([np.interp(np.arange(size[0]), centres[0], coarse[:, j]) for j in range(coarse.shape[1])], 1)
    return np.stack([np.interp(np.arange(size[1]), centres[1], rows[i]) for i in range(size[0])], 0)


@agnostic
@pytest.mark.parametrize("factor, size", [(2, (10, 7)), (2, (9, 12)), (8, (40, 37)), (32, (96, 75))])
def test_upsampling_is_clamped_bilinear_interpolation(factor, size):
    """Replicate padding, a bilinear transposed convolution and the crop give np.interp's answer
    everywhere, borders included, for a coarse map of floor(size / factor) cells."""
    coarse = np.random.default_rng(factor).normal(size=(1, size[0] // factor, size[1] // factor, 2)).astype("float32")
    reference = np.zeros((1, *size, 1), "float32")
    x = ReplicatePadding()(coarse)
    x = keras.layers.Conv2DTranspose(2, 2 * factor, strides=factor, use_bias=False,
                                     kernel_initializer=BilinearUpsampling())(x)
    upsampled = _numpy(CropToReference(factor // 2 + factor)([x, reference]))
    for channel in range(2):
        np.testing.assert_allclose(upsampled[0, ..., channel], _interpolate(coarse[0, ..., channel], factor, size),
                                   atol=1e-5)


@agnostic
def test_crop_offsets_by_hand():
    # Max pooling: cells centred on i s + (s - 1) / 2: 2x steps at offset 1, the 8x step at offset 4.
    assert crop_offset(15.5, 7.5, 2, 16) == 1 and crop_offset(7.5, 3.5, 2, 8) == 1
    assert crop_offset(3.5, 0.0, 8, 1) == 4 and crop_offset(15.5, 0.0, 32, 1) == 16
    # keras.applications' MobileNetV2 centres cell i on i s + s - 1: half a cell later, offset 1 (0.5 rounded up).
    assert crop_offset(31.0, 15.0, 2, 16) == 1 and crop_offset(7.0, 0.0, 8, 1) == 1


@agnostic
def test_convolutionize_equals_the_dense_layer():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 7, 7, 5)).astype("float32")
    dense = rng.normal(size=(7 * 7 * 5, 6)).astype("float32")
    expected = maps.reshape(2, -1) @ dense  # what Flatten + Dense compute
    convolved = _numpy(ops.conv(maps, convolutionize(dense, 7), padding="valid"))
    np.testing.assert_allclose(convolved.reshape(2, 6), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="kernel_size"):
        convolutionize(dense[:-1], 7)


# ---------------------------------------------------------------------- shapes and skip fusion

@agnostic
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_any_input_size_gives_a_score_per_pixel(name):
    model = zoo.load(name, classes=5, **SMALL_MOBILENET)
    for size in [(33, 47), (97, 61), (32, 32)]:
        scores = _numpy(model.predict(np.zeros((2, *size, 3), "float32"), verbose=0))
        assert scores.shape == (2, *size, 5)
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert find_preprocessing(model).mode == "tf"  # the backbone's: the model takes raw pixels


def _transposed_conv(x, kernel, stride):
    """[h, w, C_in] with kernel [k, k, C_out, C_in]: each input cell adds its kernel patch."""
    size = kernel.shape[0]
    out = np.zeros(((x.shape[0] - 1) * stride + size, (x.shape[1] - 1) * stride + size, kernel.shape[2]))
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i * stride:i * stride + size, j * stride:j * stride + size] += np.einsum("abcd,d->abc", kernel, x[i, j])
    return out


def _up(x, kernel, factor, offset, size):
    padded = np.pad(x, ((1, 2), (1, 2), (0, 0)), mode="edge")
    start = offset + factor
    return _transposed_conv(padded, kernel, factor)[start:start + size[0], start:start + size[1]]


@agnostic
def test_fcn8s_skip_fusion_is_the_hand_built_network():
    """Scores from the three taps, 2x up, add, 2x up, add, 8x up: in NumPy from the taps, with
    random score layers and learnt 2x kernels. Offsets by hand (keras MobileNetV2 centres cell
    i on i s + s - 1): 1 for every step."""
    model = zoo.load("fcn8s", classes=3, classifier_activation=None, **SMALL_MOBILENET)
    rng = np.random.default_rng(1)
    for layer in ("score_stride32", "score_stride16", "score_stride8", "up_to_stride16", "up_to_stride8"):
        model.get_layer(layer).set_weights([rng.normal(size=w.shape).astype("float32")
                                            for w in model.get_layer(layer).get_weights()])
    taps = keras.Model(model.input, [model.get_layer(n).output for n in ("block_5_add", "block_12_add", "out_relu")])
    image = rng.uniform(0, 255, size=(1, 75, 53, 3)).astype("float32")
    t8, t16, t32 = (_numpy(t)[0].astype(np.float64) for t in taps.predict(image, verbose=0))

    def score(features, layer):
        kernel, bias = model.get_layer(layer).get_weights()
        return features @ kernel[0, 0] + bias

    def kernel(layer):
        return model.get_layer(layer).get_weights()[0].astype(np.float64)

    s16, s8 = score(t16, "score_stride16"), score(t8, "score_stride8")
    fused16 = _up(score(t32, "score_stride32"), kernel("up_to_stride16"), 2, 1, s16.shape) + s16
    fused8 = _up(fused16, kernel("up_to_stride8"), 2, 1, s8.shape) + s8
    expected = _up(fused8, kernel("up_to_image"), 8, 1, image.shape[1:3])
    np.testing.assert_allclose(_numpy(model.predict(image, verbose=0))[0], expected, rtol=1e-4, atol=1e-3)


@agnostic
def test_fcn16s_and_fcn32s_layers():
    names16 = {layer.name for layer in zoo.load("fcn16s", classes=3, **SMALL_MOBILENET).layers}
    names32 = {layer.name for layer in zoo.load("fcn32s", classes=3, **SMALL_MOBILENET).layers}
    assert {"score_stride16", "fuse_stride16", "up_to_stride16"} <= names16 and "score_stride8" not in names16
    assert "score_stride16" not in names32 and {"score_stride32", "up_to_image", "logits"} <= names32


def test_vgg16_layout_as_in_the_paper():
    model = zoo.load("fcn8s")  # VGG16, 21 classes
    assert model.count_params() == zoo.model_card("fcn8s").parameters
    assert find_preprocessing(model).mode == "caffe"
    assert model.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    assert model.get_layer("fc7").kernel.shape == (1, 1, 4096, 4096)
    for layer in ("score_stride32", "score_stride16", "score_stride8"):
        assert not any(np.any(_numpy(w)) for w in model.get_layer(layer).weights)  # zero-initialised
    assert model.get_layer("score_stride16").input.name == model.get_layer("block4_pool").output.name
    assert model.get_layer("up_to_stride16").trainable and model.get_layer("up_to_stride8").trainable
    assert not model.get_layer("up_to_image").trainable
    assert model.get_layer("up_to_image").kernel.shape == (16, 16, 21, 21)
    scores = model.predict(np.zeros((1, 65, 33, 3), "float32"), verbose=0)
    assert scores.shape == (1, 65, 33, 21)


# ---------------------------------------------------------------------- weights

@agnostic
def test_backbone_weights_come_from_the_classifier_file(tmp_path):
    classifier = zoo.load("mobilenet_v2", alpha=0.35, include_top=False)
    rng = np.random.default_rng(2)
    classifier.get_layer("block_5_project").set_weights([rng.normal(size=(1, 1, 96, 16)).astype("float32")])
    path = tmp_path / "backbone.weights.h5"
    classifier.save_weights(path)
    model = zoo.load("fcn8s", classes=4, backbone_weights=str(path), **SMALL_MOBILENET)
    np.testing.assert_array_equal(_numpy(model.get_layer("block_5_project").kernel),
                                  _numpy(classifier.get_layer("block_5_project").kernel))


@pytest.mark.slow
def test_vgg_fc6_fc7_start_from_the_classifier(tmp_path):
    """A keras.applications-style VGG16 file with its classifier: convolutions load, fc1/fc2 become fc6/fc7."""
    from tests.zoo_reference import save_keras_applications_h5

    classifier = zoo.load("vgg16")
    path = save_keras_applications_h5(classifier, tmp_path / "vgg16.h5")
    model = zoo.load("fcn32s", classes=3, backbone_weights=str(path))
    np.testing.assert_array_equal(_numpy(model.get_layer("block5_conv3").kernel),
                                  _numpy(classifier.get_layer("block5_conv3").kernel))
    fc1_kernel, fc1_bias = classifier.get_layer("fc1").get_weights()
    np.testing.assert_array_equal(_numpy(model.get_layer("fc6").kernel), fc1_kernel.reshape(7, 7, 512, 4096))
    np.testing.assert_array_equal(_numpy(model.get_layer("fc6").bias), fc1_bias)
    np.testing.assert_array_equal(_numpy(model.get_layer("fc7").kernel)[0, 0], classifier.get_layer("fc2").get_weights()[0])


@agnostic
def test_keras_round_trip_and_fcn_weights_file(tmp_path):
    model = zoo.load("fcn16s", classes=3, **SMALL_MOBILENET)
    model.get_layer("score_stride16").set_weights([np.full((1, 1, 32, 3), 0.01, "float32"), np.arange(3, dtype="float32")])
    images = np.random.default_rng(3).uniform(0, 255, size=(2, 45, 67, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "fcn.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "fcn.keras").predict(images, verbose=0), expected,
                               atol=1e-6)
    model.save_weights(tmp_path / "fcn.weights.h5")
    again = zoo.load("fcn16s", classes=3, weights=str(tmp_path / "fcn.weights.h5"), **SMALL_MOBILENET)
    np.testing.assert_allclose(again.predict(images, verbose=0), expected, atol=1e-6)


# ---------------------------------------------------------------------- training, the CRF option

def _shapes_dataset(count=4, size=(64, 64), seed=0):
    """Images of a coloured rectangle (class 1) and disc (class 2) on a background (class 0), void borders."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size[0], 0:size[1]]
    images, masks = [], []
    for _ in range(count):
        mask = np.zeros(size, np.int32)
        top, left = rng.integers(0, size[0] // 2, 2)
        mask[top:top + size[0] // 3, left:left + size[1] // 3] = 1
        centre = rng.integers(size[0] // 4, 3 * size[0] // 4, 2)
        mask[(rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < (size[0] // 6) ** 2] = 2
        colours = np.array([[40, 90, 40], [200, 60, 50], [60, 80, 220]], np.float32)
        images.append(np.clip(colours[mask] + rng.normal(0, 10, (*size, 3)), 0, 255))
        mask[:2] = 3  # void
        masks.append(mask)
    return np.stack(images).astype("float32"), np.stack(masks)


@agnostic
def test_training_steps_lower_the_loss():
    """Zero-initialised scores start at log(3); a few Adam steps bring the training loss down
    (measured: 1.099, 0.70, 0.59, 0.62). Training-mode losses: batch norm's 0.999 momentum needs
    far more steps before inference-mode outputs settle. Training through the CRF: test_crf.py."""
    images, masks = _shapes_dataset(size=(48, 48))
    model = zoo.load("fcn8s", classes=3, **SMALL_MOBILENET)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationCrossentropy(3, ignore_label=3))
    model.optimizer.build(model.trainable_variables)  # else TensorFlow traces the train step twice
    losses = model.fit(images, masks, epochs=4, batch_size=4, verbose=0).history["loss"]
    assert losses[0] == pytest.approx(np.log(3), rel=1e-3)
    assert losses[-1] < losses[0] - 0.2


@agnostic
def test_crf_option_refines_the_logits_with_the_input_image():
    model = zoo.load("fcn8s", classes=3, crf={"iterations": 3, "bilateral_weight": 4.0}, **SMALL_MOBILENET)
    assert isinstance(model.layers[-1], DenseCRF) and model.layers[-1].iterations == 3
    model.get_layer("score_stride8").set_weights([np.random.default_rng(4).normal(size=(1, 1, 16, 3)).astype("float32"),
                                                 np.zeros(3, "float32")])
    images, _ = _shapes_dataset(2, (48, 40))
    logits = keras.Model(model.input, model.get_layer("logits").output).predict(images, verbose=0)
    crf = DenseCRF(3, 3, bilateral_weight=4.0)
    crf.build([logits.shape, images.shape])  # its variables made outside a trace
    expected = _compiled(lambda x, y: crf([x, y]))(logits, images)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)


# ---------------------------------------------------------------------- bad input

@agnostic
def test_bad_input():
    with pytest.raises(ValueError, match=r"backbone must be one of .*Received: backbone='resnet50'"):
        zoo.load("fcn8s", backbone="resnet50")
    with pytest.raises(ValueError, match="at least 32"):
        zoo.load("fcn8s", input_shape=(24, 64, 3), **SMALL_MOBILENET)
    with pytest.raises(ValueError, match="classes"):
        zoo.load("fcn8s", classes=0, **SMALL_MOBILENET)
    with pytest.raises(ValueError, match="dropout"):
        zoo.load("fcn8s", dropout=1.0, **SMALL_MOBILENET)
    with pytest.raises(TypeError, match="crf"):
        zoo.load("fcn8s", crf="yes", **SMALL_MOBILENET)
    with pytest.raises(TypeError, match=r"sets \['include_top', 'pooling'\] of its backbone itself"):
        zoo.load("fcn8s", include_top=False, pooling="avg", **SMALL_MOBILENET)
    with pytest.raises(ValueError, match=r"weights='imagenet'.*go in backbone_weights="):
        zoo.load("fcn8s", weights="imagenet")
    model = zoo.load("fcn8s", classes=3, **SMALL_MOBILENET)
    with pytest.raises(ValueError, match=r"at least 32x32 pixels, the network's output stride. Received: .*20, 40"):
        model.predict(np.zeros((1, 20, 40, 3), "float32"), verbose=0)


@agnostic
@pytest.mark.parametrize("factor", [2, 4])
def test_hypercolumn_upsampling_puts_values_over_their_pixels(factor):
    """A coarse map brought onto the stride-8 grid (VGG centres: a stride-s cell over pixels
    [s i, s (i + 1)), centred at s i + (s - 1) / 2) equals linear interpolation at each fine
    cell's centre, clamped at the borders."""
    from zoo.architectures.fcn import _grid_offset, _onto_grid, _pooling_centre

    fine_stride, coarse_stride, rows = 8, 8 * factor, 4
    coarse_values = np.array([3.0, -1.0, 4.0, 10.0], "float32")
    coarse = np.broadcast_to(coarse_values[None, :, None, None], (1, rows, 3, 1))
    reference = np.zeros((1, rows * factor, 3 * factor, 1), "float32")
    offset = _grid_offset(_pooling_centre(None, coarse_stride), _pooling_centre(None, fine_stride), factor, fine_stride)
    coarse_in, reference_in = keras.Input((None, None, 1)), keras.Input((None, None, 1))
    model = keras.Model([coarse_in, reference_in], _onto_grid(coarse_in, reference_in, factor=factor, offset=offset,
                                                               name="onto_grid"))
    out = _numpy(model([coarse, reference]))[0, :, 0, 0]
    fine_centres = fine_stride * np.arange(rows * factor) + (fine_stride - 1) / 2
    at = (fine_centres - (coarse_stride - 1) / 2) / coarse_stride  # in coarse cells
    np.testing.assert_allclose(out, np.interp(at, np.arange(rows), coarse_values), atol=1e-5)
