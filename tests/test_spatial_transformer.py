"""SpatialTransformer against a NumPy bilinear sampler and hand-computed warps, its gradients against
finite differences, and the zoo's ST-CNN (identity at initialisation, training, files, export)."""

import numpy as np
import pytest

import keras
import zoo
from hybrid_keras.layers import SpatialTransformer, affine_regression
from zoo.architectures.spatial_transformer import transformer_model

agnostic = pytest.mark.backend_agnostic
IDENTITY = np.array([1, 0, 0, 0, 1, 0], np.float32)
TINY = dict(filters=(2, 3), localisation_filters=(2, 2), localisation_units=4)  # a few weights: fast on every backend


def _centres(n, align_corners):
    """Normalised coordinates of n pixel centres, written from the stated conventions."""
    if align_corners:
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    return (np.arange(n) + 0.5) * 2.0 / n - 1.0


def _reference(image, theta, out_h, out_w, align_corners, fill=0.0):
    """The bilinear sampler, one output pixel at a time: the input padded with `fill`, read at
    (x_s, y_s) = A_theta (x_t, y_t, 1)."""
    height, width, channels = image.shape
    out = np.zeros((out_h, out_w, channels))
    for i, y_t in enumerate(_centres(out_h, align_corners)):
        for j, x_t in enumerate(_centres(out_w, align_corners)):
            x_s = theta[0] * x_t + theta[1] * y_t + theta[2]
            y_s = theta[3] * x_t + theta[4] * y_t + theta[5]
            if align_corners:
                px, py = (x_s + 1) / 2 * (width - 1), (y_s + 1) / 2 * (height - 1)
            else:
                px, py = ((x_s + 1) * width - 1) / 2, ((y_s + 1) * height - 1) / 2
            for yy in (int(np.floor(py)), int(np.floor(py)) + 1):
                for xx in (int(np.floor(px)), int(np.floor(px)) + 1):
                    weight = max(0.0, 1 - abs(px - xx)) * max(0.0, 1 - abs(py - yy))
                    inside = 0 <= yy < height and 0 <= xx < width
                    out[i, j] += weight * (image[yy, xx] if inside else fill)
    return out


def _run(layer, images, theta):
    theta = np.asarray(theta, "float32")
    if keras.backend.backend() == "jax":  # one XLA program, not one compilation per operation and shape
        import jax

        return np.asarray(jax.jit(lambda a, b: layer([a, b]))(images, theta))
    return keras.ops.convert_to_numpy(layer([images, theta]))


@agnostic
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_is_exact(rng, align_corners):
    images = rng.normal(size=(2, 6, 7, 3)).astype("float32")
    out = _run(SpatialTransformer((6, 7), align_corners=align_corners), images, np.stack([IDENTITY] * 2))
    np.testing.assert_allclose(out, images, rtol=1e-6, atol=2e-6)  # float32 rounding of the grid only
    pixels = rng.integers(0, 256, size=(1, 5, 5, 1)).astype("uint8")  # raw pixels are read as they are
    out = _run(SpatialTransformer(5, align_corners=align_corners), pixels, IDENTITY[None])
    np.testing.assert_allclose(out, pixels.astype("float32"), atol=1e-3)


@agnostic
@pytest.mark.parametrize("align_corners", [False, True])
def test_quarter_turns_are_rot90(rng, align_corners):
    images = rng.normal(size=(1, 6, 6, 2)).astype("float32")
    layer = SpatialTransformer(6, align_corners=align_corners)
    # np.rot90(m)[i, j] = m[j, n-1-i]: row i (y_t) reads row j (y_s = x_t) and column n-1-i (x_s = -y_t).
    counterclockwise = _run(layer, images, [[0, -1, 0, 1, 0, 0]])
    clockwise = _run(layer, images, [[0, 1, 0, -1, 0, 0]])
    np.testing.assert_allclose(counterclockwise[0], np.rot90(images[0]), atol=2e-6)
    np.testing.assert_allclose(clockwise[0], np.rot90(images[0], k=-1), atol=2e-6)
    odd = rng.normal(size=(1, 5, 5, 1)).astype("float32")
    np.testing.assert_allclose(_run(SpatialTransformer(5, align_corners=align_corners), odd, [[0, -1, 0, 1, 0, 0]])[0],
                               np.rot90(odd[0]), atol=2e-6)


@agnostic
def test_one_pixel_shift_by_hand(rng):
    images = rng.normal(size=(1, 4, 5, 1)).astype("float32")
    # Half-pixel convention: one pixel is 2 / width in x, 2 / height in y.
    right = _run(SpatialTransformer((4, 5), fill_value=-7.0), images, [[1, 0, 2 / 5, 0, 1, 0]])[0, ..., 0]
    expected = np.concatenate([images[0, :, 1:, 0], np.full((4, 1), -7.0)], axis=1)  # out[:, j] = in[:, j + 1]
    np.testing.assert_allclose(right, expected, rtol=1e-6, atol=2e-6)
    # Pixel-centre convention: one pixel is 2 / (height - 1) in y; shifted up, the last row reads the fill.
    up = _run(SpatialTransformer((4, 5), align_corners=True), images, [[1, 0, 0, 0, 1, 2 / 3]])[0, ..., 0]
    np.testing.assert_allclose(up, np.concatenate([images[0, 1:, :, 0], np.zeros((1, 5))]), atol=2e-6)
    # Half a pixel down-right of the top-left pixel, within the padding: (fill + fill + fill + p) / 4.
    corner = _run(SpatialTransformer(1, fill_value=2.0), images, [[0, 0, -1, 0, 0, -1]])[0, 0, 0, 0]
    np.testing.assert_allclose(corner, (3 * 2.0 + images[0, 0, 0, 0]) / 4, atol=2e-6)


@agnostic
@pytest.mark.parametrize("align_corners", [False, True])
def test_zooms_translations_and_general_affines_match_numpy(rng, align_corners):
    image = rng.normal(size=(7, 9, 2)).astype("float32")
    same_size = {  # output 7x9, one batch
        "zoom in 2x on the centre": [0.5, 0, 0, 0, 0.5, 0],
        "zoom out 2x (reads the fill)": [2, 0, 0, 0, 2, 0],
        "translation by a fraction": [1, 0, 0.37, 0, 1, -0.21],
        "shear and shift": [1, 0.4, -0.2, 0.1, 0.9, 0.3],
    }
    other_sizes = {
        "zoom into the top-left quarter": ([0.5, 0, -0.5, 0, 0.5, -0.5], (5, 5)),
        "anisotropic scale, smaller output": ([1.3, 0, 0.1, 0, 0.7, 0], (4, 6)),
        "rotation by 30 degrees, upsampled": ([np.cos(0.52), -np.sin(0.52), 0, np.sin(0.52), np.cos(0.52), 0], (11, 13)),
    }
    cases = [(fill, (7, 9), same_size) for fill in (0.0, -1.0)]
    cases += [(0.0, size, {title: theta}) for title, (theta, size) in other_sizes.items()]
    for fill, size, thetas in cases:
        images = np.stack([image] * len(thetas))
        out = _run(SpatialTransformer(size, align_corners=align_corners, fill_value=fill), images, list(thetas.values()))
        for row, (title, theta) in enumerate(thetas.items()):
            expected = _reference(image.astype(np.float64), theta, *size, align_corners, fill)
            np.testing.assert_allclose(out[row], expected, atol=1e-5, err_msg=f"{title}, fill {fill}")


def _gradients(fn, *args):
    """Gradients of the scalar fn(*args) with respect to each argument, with the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*variables)
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, variables)]
    if backend == "jax":
        import jax

        return [np.asarray(g) for g in jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))(*args)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    fn(*tensors).backward()
    return [t.grad.numpy() for t in tensors]


@pytest.fixture
def float64():
    """JAX computes in float32 unless x64 is switched on; on for this test only."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@agnostic
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradients_match_finite_differences(rng, float64, align_corners):
    out_size = (4, 5)
    images = rng.normal(size=(2, 5, 6, 2))
    theta = np.stack([IDENTITY] * 2).astype(np.float64) + rng.normal(scale=0.3, size=(2, 6))
    weights = rng.normal(size=(2, *out_size, 2))
    # Bilinear sampling is piecewise smooth in theta: keep every sample point away from pixel
    # boundaries, where the (sub)gradient jumps, so that central differences see one piece (a step
    # of 1e-6 in theta moves a point by at most 1e-5 pixels here).
    for row in theta:
        for y_t in _centres(out_size[0], align_corners):
            for x_t in _centres(out_size[1], align_corners):
                x_s, y_s = row[0] * x_t + row[1] * y_t + row[2], row[3] * x_t + row[4] * y_t + row[5]
                for coordinate, size in ((x_s, 6), (y_s, 5)):
                    pixels = (coordinate + 1) / 2 * (size - 1) if align_corners else ((coordinate + 1) * size - 1) / 2
                    assert abs(pixels - np.round(pixels)) > 1e-4
    layer = SpatialTransformer(out_size, align_corners=align_corners, fill_value=0.5, dtype="float64")

    def loss(images, theta):
        return keras.ops.sum(keras.ops.multiply(layer([images, theta]), weights))

    def value(images, theta):  # the NumPy sampler, in float64: an independent function to difference
        return sum(float(np.sum(_reference(image, row, *out_size, align_corners, 0.5) * w))
                   for image, row, w in zip(images, theta, weights))

    grad_images, grad_theta = _gradients(loss, images, theta)
    eps = 1e-6
    numeric_theta = np.zeros_like(theta)
    for index in np.ndindex(theta.shape):
        step = np.zeros_like(theta)
        step[index] = eps
        numeric_theta[index] = (value(images, theta + step) - value(images, theta - step)) / (2 * eps)
    np.testing.assert_allclose(grad_theta, numeric_theta, rtol=1e-6, atol=1e-7)
    for index in [tuple(rng.integers(0, n) for n in images.shape) for _ in range(12)]:
        step = np.zeros_like(images)
        step[index] = 1e-3  # the output is linear in the image: differences are exact
        numeric = (value(images + step, theta) - value(images - step, theta)) / 2e-3
        np.testing.assert_allclose(grad_images[index], numeric, rtol=1e-6, atol=1e-9)
    assert np.abs(grad_images).sum() > 0 and np.abs(grad_theta).min() > 0


@agnostic
def test_bad_input_is_refused_clearly():
    layer = SpatialTransformer(4)
    images = np.zeros((2, 6, 6, 1), np.float32)
    with pytest.raises(ValueError, match=r"theta of shape \[batch, 6\].*Received: theta of shape \(2, 4\)"):
        layer([images, np.zeros((2, 4), np.float32)])
    with pytest.raises(ValueError, match=r"theta of shape \[batch, 6\].*Received: theta of shape \(2, 2, 3\)"):
        layer([images, np.zeros((2, 2, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images of rank 4.*Received: images of shape \(6, 6, 1\)"):
        SpatialTransformer(4)([images[0], np.zeros((1, 6), np.float32)])
    with pytest.raises(ValueError, match="one theta per image"):
        SpatialTransformer(4)([images, np.zeros((3, 6), np.float32)])
    with pytest.raises(ValueError, match=r"\(images, theta\)\. Received: a single tensor of shape \(2, 6, 6, 1\)"):
        SpatialTransformer(4)(images)
    with pytest.raises(ValueError, match=r"called on \(images, theta\)\. Received: 3 inputs"):
        SpatialTransformer(4)([images, images, images])
    for size in (0, (3,), (2, -1), "8", (2.5, 3)):
        with pytest.raises(ValueError, match="output_size must be"):
            SpatialTransformer(size)
    with pytest.raises(ValueError, match="fill_value must be a number"):
        SpatialTransformer(4, fill_value="black")
    with pytest.raises(ValueError, match="affine_regression sets"):
        affine_regression(units=4)


def test_layer_round_trips_through_a_keras_file(tmp_path, rng):
    images = keras.Input((6, 7, 2))
    theta = keras.Input((6,))
    layer = SpatialTransformer((3, 4), align_corners=True, fill_value=-1.0, name="st")
    model = keras.Model([images, theta], layer([images, theta]))
    model.save(tmp_path / "st.keras")
    loaded = keras.saving.load_model(tmp_path / "st.keras")
    assert loaded.get_layer("st").get_config() == layer.get_config()
    x, t = rng.normal(size=(2, 6, 7, 2)).astype("float32"), rng.normal(size=(2, 6)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded([x, t])), keras.ops.convert_to_numpy(model([x, t])),
                               atol=1e-6)


@agnostic
def test_st_cnn_starts_at_the_identity(rng):
    st = zoo.load("st_cnn", input_shape=(12, 12, 1), classes=3, **TINY)
    pixels = rng.integers(0, 256, size=(4, 12, 12, 1)).astype("float32")
    parts = transformer_model(st)(pixels)
    # affine_regression starts at the identity, so the classifier sees the input pixels.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(parts["theta"]), np.stack([IDENTITY] * 4), atol=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(parts["warped"]), pixels, atol=1e-3)


def test_st_cnn_is_its_plain_twin_at_first_and_round_trips_through_files(tmp_path, rng):
    shape = (12, 12, 1)
    st = zoo.load("st_cnn", input_shape=shape, classes=3, **TINY)
    plain = zoo.load("mnist_cnn", input_shape=shape, classes=3, filters=TINY["filters"])
    for name in ("conv1", "conv2", "predictions"):
        plain.get_layer(name).set_weights(st.get_layer(name).get_weights())
    pixels = rng.integers(0, 256, size=(4, *shape)).astype("float32")
    # The same classifier weights and an identity transformer: the same predictions.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(st(pixels)), keras.ops.convert_to_numpy(plain(pixels)),
                               atol=1e-6)

    theta = st.get_layer("theta")  # away from the identity, so that the transformer's part shows
    theta.set_weights([rng.normal(scale=0.05, size=(4, 6)).astype("float32"),
                       np.array([0.9, 0.2, 0.1, -0.2, 0.9, 0], "float32")])
    predictions = keras.ops.convert_to_numpy(st(pixels))
    st.save(tmp_path / "st_cnn.keras")
    loaded = keras.saving.load_model(tmp_path / "st_cnn.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(pixels)), predictions, atol=1e-6)
    st.save_weights(tmp_path / "st_cnn.weights.h5")
    again = zoo.load("st_cnn", weights=str(tmp_path / "st_cnn.weights.h5"), input_shape=shape, classes=3, **TINY)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(pixels)), predictions, atol=1e-6)


@agnostic
def test_st_cnn_training_lowers_the_loss_and_moves_theta(rng):
    model = zoo.load("st_cnn", input_shape=(12, 12, 1), classes=3, **TINY)
    # Three steps: TensorFlow and PyTorch run them eagerly (tracing would cost more), JAX jitted.
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  run_eagerly=keras.backend.backend() != "jax")
    pixels = rng.integers(0, 256, size=(16, 12, 12, 1)).astype("float32")
    labels = rng.integers(0, 3, size=16)
    losses = model.fit(pixels, labels, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    # The classification loss reached the localisation network through the sampler.
    assert np.abs(keras.ops.convert_to_numpy(model.get_layer("theta").kernel)).max() > 0


def test_cards_and_builder_errors():
    for name in ("mnist_cnn", "st_cnn"):
        card = zoo.model_card(name)
        assert zoo.load(name).count_params() == card.parameters, name
    with pytest.raises(ValueError, match="fixed input height and width"):
        zoo.load("st_cnn", input_shape=(None, None, 1))
    with pytest.raises(ValueError, match="filters must be two positive ints"):
        zoo.load("mnist_cnn", filters=(8,))
    with pytest.raises(ValueError, match="no published weights"):
        zoo.load("st_cnn", weights="imagenet")
    with pytest.raises(ValueError, match="needs an ST-CNN"):
        transformer_model(zoo.load("mnist_cnn", input_shape=(12, 12, 1), filters=(2, 3)))


def test_st_cnn_exports_to_a_saved_model(tmp_path, rng):
    """The exported graph (sampler included) reproduces the Keras model. Checked in this process: the
    fresh-process verification costs a TensorFlow import, and the benchmark runs it on the trained model."""
    import tensorflow as tf

    import hybrid_keras as hk

    model = zoo.load("st_cnn", input_shape=(16, 16, 1), classes=4, **TINY)
    theta = model.get_layer("theta")  # a localisation network that rotates and shifts, not the identity
    theta.set_weights([rng.normal(scale=0.05, size=(4, 6)).astype("float32"),
                       np.array([0.8, -0.5, 0.1, 0.5, 0.8, -0.1], "float32")])
    path = hk.export_saved_model(model, tmp_path / "st_cnn" / "1", verify=False)
    pixels = rng.integers(0, 256, size=(3, 16, 16, 1)).astype("uint8")
    served = tf.saved_model.load(str(path)).signatures["serve_uint8"](images=tf.constant(pixels))
    expected = keras.ops.convert_to_numpy(model(pixels.astype("float32")))
    np.testing.assert_allclose(served["predictions"].numpy(), expected, atol=1e-6)
