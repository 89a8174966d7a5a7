"""DenseCRF against an exact O(N^2) NumPy mean-field, its energy over iterations, training
through it, batches, serialisation and bad input; on every backend (export: TensorFlow)."""

import keras
import numpy as np
import pytest
from keras import ops

from hybrid_keras.layers import DenseCRF

pytestmark = pytest.mark.backend_agnostic

SMALL = dict(spatial_weight=3.0, spatial_sigma=2.0, bilateral_weight=5.0, bilateral_spatial_sigma=6.0,
             bilateral_color_sigma=20.0)


# ---------------------------------------------------------------------- the reference

def _kernels(height, width, image, *, spatial_sigma, bilateral_spatial_sigma, bilateral_color_sigma, normalization):
    """The exact spatial and bilateral kernel matrices [N, N] of one image, in float64."""
    rows, columns = np.mgrid[0:height, 0:width]
    positions = np.stack([rows, columns], -1).reshape(-1, 2).astype(np.float64)
    colours = np.clip(image.reshape(height * width, -1).astype(np.float64), 0, 255)

    def gaussian(features):
        return np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))

    kernels = [gaussian(positions / spatial_sigma),
               gaussian(np.concatenate([positions / bilateral_spatial_sigma, colours / bilateral_color_sigma], 1))]
    if normalization == "symmetric":
        kernels = [k / np.sqrt(np.outer(k.sum(1), k.sum(1))) for k in kernels]
    return kernels


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reference_mean_field(logits, images, iterations, *, spatial_weight, spatial_sigma, bilateral_weight,
                         bilateral_spatial_sigma, bilateral_color_sigma, normalization="symmetric", compatibility=None):
    """Krähenbühl & Koltun's mean-field updates with the fully connected kernels written out."""
    batch, height, width, classes = logits.shape
    mu = 1 - np.eye(classes) if compatibility is None else compatibility
    out = []
    for logit, image in zip(logits.astype(np.float64), images):
        spatial, bilateral = _kernels(height, width, image, spatial_sigma=spatial_sigma,
                                      bilateral_spatial_sigma=bilateral_spatial_sigma,
                                      bilateral_color_sigma=bilateral_color_sigma, normalization=normalization)
        kernel = spatial_weight * spatial + bilateral_weight * bilateral
        unary = logit.reshape(-1, classes)
        q = _softmax(unary)
        for _ in range(iterations):
            q = _softmax(unary - (kernel @ q) @ mu.T)
        out.append(q.reshape(height, width, classes))
    return np.stack(out)


def free_energy(q, logits, kernel, compatibility):
    """Mean-field free energy (KL up to a constant): entropy term, unary and pairwise expectations."""
    q = q.reshape(-1, q.shape[-1]).astype(np.float64)
    unary = -logits.reshape(q.shape).astype(np.float64)
    return (np.sum(q * np.log(np.maximum(q, 1e-300))) + np.sum(q * unary)
            + 0.5 * np.sum((kernel @ q) * (q @ compatibility.T)))


def scene(batch, height, width, classes, seed):
    """Images of three colour regions with noise, and logits that mostly favour each pixel's region."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    images, logits = [], []
    for _ in range(batch):
        centre = rng.uniform([0.3 * height, 0.3 * width], [0.7 * height, 0.7 * width])
        region = np.zeros((height, width), int)
        region[(rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < (0.3 * min(height, width)) ** 2] = 1
        region[rows > 0.8 * height] = 2
        palette = rng.uniform(30, 225, size=(3, 3))
        images.append(np.clip(palette[region] + rng.normal(0, 8, (height, width, 3)), 0, 255))
        noisy = np.where(rng.random((height, width)) < 0.3, rng.integers(0, classes, (height, width)), region % classes)
        logits.append(2.0 * np.eye(classes)[noisy] + rng.normal(0, 1.0, (height, width, classes)))
    return np.stack(logits).astype("float32"), np.stack(images).astype("float32")


def _numpy(x):
    return ops.convert_to_numpy(x)


def _compiled(fn, *args):
    """``fn(*args)`` as NumPy; under JAX in one ``jax.jit`` call: one XLA compilation instead of
    one per operation (a fifth of the time). TensorFlow and PyTorch run it eagerly."""
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.jit(fn)(*args))
    return _numpy(fn(*args))


def _refine(crf, logits, images):
    """The layer's output for ``[logits, images]`` (built first, so no variable is made inside a trace)."""
    if not crf.built:
        crf.build([logits.shape, images.shape])
    return _compiled(lambda x, y: crf([x, y]), logits, images)


# ---------------------------------------------------------------------- against the exact mean field

@pytest.mark.parametrize("normalization", ["symmetric", "none"])
def test_exact_filtering_is_the_numpy_mean_field(normalization):
    logits, images = scene(2, 9, 11, 4, seed=0)
    crf = DenseCRF(4, 5, normalization=normalization, filtering="exact", **SMALL)
    expected = reference_mean_field(logits, images, 5, normalization=normalization, **SMALL)
    np.testing.assert_allclose(_refine(crf, logits, images), expected, atol=2e-5)


def test_learned_compatibility_is_the_numpy_mean_field():
    logits, images = scene(1, 8, 10, 3, seed=1)
    compatibility = np.random.default_rng(2).uniform(-1, 2, (3, 3)).astype("float32")
    crf = DenseCRF(3, 4, compatibility="learned", filtering="exact", **SMALL)
    crf.build([logits.shape, images.shape])
    crf.compatibility.assign(compatibility)
    expected = reference_mean_field(logits, images, 4, compatibility=compatibility.astype(np.float64), **SMALL)
    np.testing.assert_allclose(_refine(crf, logits, images), expected, atol=2e-5)


@pytest.mark.parametrize("size", [(18, 23), (32, 40)])
def test_grid_filtering_is_close_to_the_exact_mean_field(size):
    """The bilateral grid approximates the exact kernel; measured on these scenes: mean |dQ| 5e-4
    (largest 0.05 and 0.15), every label the same; bounded here with room."""
    logits, images = scene(2, *size, 4, seed=3)
    crf = DenseCRF(4, 5, **SMALL)
    expected = reference_mean_field(logits, images, 5, **SMALL)
    refined = _refine(crf, logits, images)
    assert np.abs(refined - expected).mean() < 0.005
    assert np.mean(refined.argmax(-1) == expected.argmax(-1)) > 0.98
    # The CRF changes many labels: the agreement above is not just the unaries'.
    assert np.mean(expected.argmax(-1) != logits.argmax(-1)) > 0.1


def test_grid_spatial_kernel_is_exact():
    """With the bilateral weight at 0, only the separable spatial filter remains: exact up to its 4-sigma cut."""
    logits, images = scene(1, 12, 17, 3, seed=4)
    options = dict(SMALL, bilateral_weight=0.0)
    expected = reference_mean_field(logits, images, 3, **options)
    np.testing.assert_allclose(_refine(DenseCRF(3, 3, **options), logits, images), expected, atol=1e-4)


# ---------------------------------------------------------------------- energy and gradients

def _layer_kernel(crf, images):
    """The layer's own kernel matrix (weights included): its messages for the identity marginals."""
    _, height, width, _ = images.shape
    pixels = height * width
    identity = np.eye(pixels, dtype="float32").reshape(1, height, width, pixels)
    return _compiled(crf.pairwise_messages, identity, images).reshape(pixels, pixels).T.astype(np.float64)


@pytest.mark.parametrize("filtering", ["exact", "grid"])
def test_potts_mean_field_never_raises_the_energy(filtering):
    """Strong weights, where parallel updates without a positive semidefinite kernel oscillate."""
    logits, images = scene(1, 7, 9, 3, seed=5)
    options = dict(SMALL, spatial_weight=10.0, bilateral_weight=30.0)
    crf = DenseCRF(3, 0, filtering=filtering, **options)
    crf.build([logits.shape, images.shape])
    kernel = _layer_kernel(crf, images)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-4)
    assert np.linalg.eigvalsh(0.5 * (kernel + kernel.T)).min() > -1e-3 * np.abs(kernel).max()
    potts = 1 - np.eye(3)
    energies = [free_energy(_refine(DenseCRF(3, t, filtering=filtering, **options), logits, images), logits,
                            kernel, potts) for t in range(8)]
    assert all(b <= a + 1e-4 * abs(a) for a, b in zip(energies, energies[1:])), energies
    assert energies[-1] < energies[0] - 1.0  # it does descend


def test_training_moves_kernel_weights_and_compatibility():
    logits, images = scene(2, 10, 12, 3, seed=6)
    labels = np.argmax(reference_mean_field(logits, images, 3, **SMALL), -1)  # any fixed target
    logits_in = keras.Input((10, 12, 3))
    images_in = keras.Input((10, 12, 3))
    crf = DenseCRF(3, 3, compatibility="learned", **SMALL)
    model = keras.Model([logits_in, images_in], crf([logits_in, images_in]))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    before = [np.array(_numpy(w)) for w in crf.trainable_weights]
    assert len(before) == 3  # spatial weight, bilateral weight, compatibility
    history = model.fit([logits, images], labels, epochs=4, batch_size=2, verbose=0)
    after = [np.array(_numpy(w)) for w in crf.trainable_weights]
    for old, new in zip(before, after):
        assert np.all(np.isfinite(new)) and not np.allclose(old, new)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_potts_compatibility_is_not_trained():
    crf = DenseCRF(3)
    crf.build([(None, 8, 8, 3), (None, 8, 8, 3)])
    assert {w.path.split("/")[-1] for w in crf.trainable_weights} == {"spatial_weight", "bilateral_weight"}


# ---------------------------------------------------------------------- batches, shapes, serialisation

def test_batch_is_each_image_on_its_own():
    logits, images = scene(3, 11, 13, 4, seed=7)
    crf = DenseCRF(4, 3, **SMALL)
    together = _refine(crf, logits, images)
    for index in range(3):
        alone = _refine(crf, logits[index:index + 1], images[index:index + 1])
        np.testing.assert_allclose(together[index], alone[0], atol=1e-5)


def test_no_iterations_is_the_softmax_and_output_is_a_distribution():
    logits, images = scene(2, 9, 10, 4, seed=8)
    np.testing.assert_allclose(_refine(DenseCRF(4, 0), logits, images), _softmax(logits), atol=1e-6)
    refined = _refine(DenseCRF(4, 5), logits, images)
    np.testing.assert_allclose(refined.sum(-1), 1.0, atol=1e-5)
    assert refined.shape == logits.shape


def test_uint8_and_grey_images():
    logits, images = scene(1, 9, 10, 3, seed=9)
    crf = DenseCRF(3, 2, **SMALL)
    np.testing.assert_allclose(_refine(crf, logits, np.round(images).astype("uint8")),
                               _refine(crf, logits, np.round(images)), atol=1e-6)
    grey = images.mean(-1, keepdims=True)  # one colour channel: a 3-D grid
    expected = reference_mean_field(logits, grey, 2, **SMALL)
    np.testing.assert_allclose(_refine(DenseCRF(3, 2, filtering="exact", **SMALL), logits, grey), expected, atol=2e-5)
    assert np.abs(_refine(DenseCRF(3, 2, **SMALL), logits, grey) - expected).mean() < 0.02  # measured 0.010


def test_keras_round_trip_keeps_trained_values(tmp_path):
    logits_in = keras.Input((None, None, 3))
    images_in = keras.Input((None, None, 3))
    crf = DenseCRF(3, 2, compatibility="learned", **SMALL)
    model = keras.Model([logits_in, images_in], crf([logits_in, images_in]))
    crf.bilateral_weight.assign(7.5)
    crf.compatibility.assign(np.full((3, 3), 0.25, "float32"))
    model.save(tmp_path / "crf.keras")
    loaded = keras.saving.load_model(tmp_path / "crf.keras")
    logits, images = scene(1, 9, 12, 3, seed=10)
    np.testing.assert_allclose(_numpy(loaded.predict([logits, images], verbose=0)),
                               _numpy(model.predict([logits, images], verbose=0)), atol=1e-6)
    assert loaded.get_layer(crf.name).get_config() == crf.get_config()


def test_bad_input():
    logits, images = scene(1, 9, 10, 3, seed=11)
    with pytest.raises(ValueError, match="num_classes=4 channels"):
        DenseCRF(4)([logits, images])
    with pytest.raises(ValueError, match="same batch size, height and width"):
        DenseCRF(3)([logits, images[:, :8]])
    with pytest.raises(ValueError, match="filtering='exact'"):
        DenseCRF(3, filtering="exact")([np.zeros((1, 200, 200, 3), "float32"), np.zeros((1, 200, 200, 3), "float32")])
    with pytest.raises(ValueError, match="bilateral_color_sigma"):
        DenseCRF(3, bilateral_color_sigma=0.5)([logits, images])
    for arguments, message in (({"num_classes": 1}, "num_classes"), ({"num_classes": 3, "iterations": -1}, "iterations"),
                               ({"num_classes": 3, "spatial_sigma": 0}, "spatial_sigma"),
                               ({"num_classes": 3, "compatibility": "pots"}, "compatibility"),
                               ({"num_classes": 3, "filtering": "lattice"}, "filtering")):
        with pytest.raises(ValueError, match=message):
            DenseCRF(**arguments)
