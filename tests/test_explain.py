"""Explanations (hybrid_keras.explain) against hand-built networks whose answer is known:
deconvnet projections written out in NumPy (switches, rectification, transposed filters),
an occluder over the only informative patch, Grad-CAM where each class reads one channel;
a branching zoo model, and the command line."""

import json

import numpy as np
import pytest

import keras
from keras import layers, ops

from hybrid_keras import explain
from hybrid_keras.explain import RectifiedReLU, deconvnet, grad_cam, occlusion, rectified_relu, value_and_gradients

agnostic = pytest.mark.backend_agnostic


# ---- NumPy reference: valid 3x3 convolutions, 2x2/2 max pooling, and the deconvnet's reverse steps.

def _conv(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1, kernel.shape[-1]))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.tensordot(x[i:i + kh, j:j + kw], kernel, axes=3) + bias
    return out


def _transposed_conv(signal, kernel, input_shape):
    """The deconvnet's filtering step: each output's signal spread back over its receptive field
    through the same (transposed) filter."""
    kh, kw = kernel.shape[:2]
    out = np.zeros(input_shape)
    for i in range(signal.shape[0]):
        for j in range(signal.shape[1]):
            out[i:i + kh, j:j + kw] += np.tensordot(kernel, signal[i, j], axes=([3], [0]))
    return out


def _pool_with_switches(a):
    h, w, c = a.shape[0] // 2, a.shape[1] // 2, a.shape[2]
    windows = a[:2 * h, :2 * w].reshape(h, 2, w, 2, c).transpose(0, 2, 4, 1, 3).reshape(h, w, c, 4)
    return windows.max(-1), windows.argmax(-1)  # the switch: which of the 4 cells won


def _unpool(signal, switches, shape):
    out = np.zeros(shape)
    for i, j, c in np.ndindex(*signal.shape):
        di, dj = divmod(switches[i, j, c], 2)
        out[2 * i + di, 2 * j + dj, c] = signal[i, j, c]
    return out


def _relu_backward(signal, forward_input, rule):
    if rule == "deconvnet":
        return np.maximum(signal, 0.0)
    if rule == "guided":
        return np.maximum(signal, 0.0) * (forward_input > 0)
    return signal * (forward_input > 0)


def _weights(seed):
    rng = np.random.default_rng(seed)
    k1 = rng.normal(0.0, 0.3, (3, 3, 3, 4)).astype("float32")
    b1 = np.full(4, 0.6, "float32")  # mostly positive pre-activations: every pooling window has one winner
    k2 = rng.normal(0.0, 0.3, (3, 3, 4, 3)).astype("float32")
    b2 = np.full(3, 0.1, "float32")
    images = rng.uniform(0.0, 1.0, (2, 12, 12, 3)).astype("float32")
    return k1, b1, k2, b2, images


def _net(k1, b1, k2, b2):
    """conv1 (ReLU as an argument) -> pool -> conv2 -> ReLU layer -> global pool -> softmax."""
    x = keras.Input((12, 12, 3))
    y = layers.Conv2D(4, 3, activation="relu", name="conv1")(x)
    y = layers.MaxPooling2D(2, name="pool")(y)
    y = layers.Conv2D(3, 3, name="conv2")(y)
    y = layers.ReLU(name="relu2")(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    y = layers.Dense(2, activation="softmax", name="predictions")(y)
    model = keras.Model(x, y)
    model.get_layer("conv1").set_weights([k1, b1])
    model.get_layer("conv2").set_weights([k2, b2])
    return model


def _reference(image, k1, b1, k2, b2, layer, rule):
    """The projection of the strongest activation of the strongest map of ``layer``, by hand."""
    z1 = _conv(image, k1, b1)
    a1 = np.maximum(z1, 0.0)
    pooled, switches = _pool_with_switches(a1)
    assert np.all(pooled > 0), "a pooling window with no positive winner would make the switch a tie"
    if layer == "pool":
        top = np.unravel_index(np.argmax(pooled), pooled.shape)
        signal = np.zeros_like(pooled)
        signal[top] = pooled[top]
    else:
        z2 = _conv(pooled, k2, b2)
        a2 = np.maximum(z2, 0.0)
        top = np.unravel_index(np.argmax(a2), a2.shape)
        signal2 = np.zeros_like(a2)
        signal2[top] = a2[top]
        signal = _transposed_conv(_relu_backward(signal2, z2, rule), k2, pooled.shape)
    unpooled = _unpool(signal, switches, a1.shape)
    return _transposed_conv(_relu_backward(unpooled, z1, rule), k1, image.shape), top[-1]


@agnostic
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_projection_matches_the_hand_written_deconvnet(rule):
    k1, b1, k2, b2, images = _weights(0)
    model = _net(k1, b1, k2, b2)
    for layer in ("pool", "relu2") if rule == "deconvnet" else ("relu2",):
        result = deconvnet(model, images, layer, rule=rule)
        for index, image in enumerate(images):
            expected, channel = _reference(image.astype(np.float64), k1, b1, k2, b2, layer, rule)
            assert result.channels[index] == channel
            np.testing.assert_allclose(result.pixels[index], expected, rtol=1e-4, atol=1e-5)
    if rule == "deconvnet":  # the rectification matters here: it is not the gradient
        _, _, _, _, image = _weights(0)
        gradient, _ = _reference(image[0].astype(np.float64), k1, b1, k2, b2, "relu2", "gradient")
        assert np.abs(result.pixels[0] - gradient).max() > 1e-3


@agnostic
def test_rectified_relu_backward_rules():
    x = np.array([-2.0, -0.5, 0.5, 3.0, 7.0], "float32")
    upstream = np.array([1.0, -1.0, -1.0, 2.0, 1.0], "float32")
    expected = {"deconvnet": [1, 0, 0, 2, 1], "guided": [0, 0, 0, 2, 0], "gradient": [0, 0, -1, 2, 0]}

    signal = ops.convert_to_tensor(upstream)

    def fn(*inputs):  # one input per rule: each input's gradient is its rule's backward pass
        return sum(ops.sum(rectified_relu(v, rule, max_value=6.0) * signal) for v, rule in zip(inputs, expected)), ()

    _, gradients = value_and_gradients(fn, [x] * 3, wrt=(0, 1, 2))
    for gradient, want in zip(gradients, expected.values()):
        np.testing.assert_array_equal(gradient, np.asarray(want, "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(rectified_relu(x, "deconvnet", max_value=6.0)),
                                  np.clip(x, 0, 6))
    layer = RectifiedReLU("guided", max_value=6.0, name="r")
    assert RectifiedReLU.from_config(layer.get_config()).get_config() == layer.get_config()


def _patch_model(patch=(slice(4, 8), slice(6, 10))):
    """Reads only a 4x4 patch of a 12x12 grey image: class 0's logit is the patch's sum / 256 - 15."""
    x = keras.Input((12, 12, 1))
    y = layers.Cropping2D(((patch[0].start, 12 - patch[0].stop), (patch[1].start, 12 - patch[1].stop)))(x)
    y = layers.Flatten()(y)
    y = layers.Dense(2, activation="softmax", name="predictions")(y)
    model = keras.Model(x, y)
    model.get_layer("predictions").set_weights([np.stack([np.full(16, 1 / 256, "float32"), np.zeros(16, "float32")], 1),
                                                np.array([-15.0, 0.0], "float32")])
    return model


@agnostic
def test_occlusion_is_low_exactly_over_the_informative_patch():
    model = _patch_model()
    image = np.random.default_rng(1).uniform(0, 60, (1, 12, 12, 1)).astype("float32")
    image[0, 4:8, 6:10] = 255.0
    result = occlusion(model, image, size=3, stride=1)
    assert result.class_index[0] == 0 and result.fill.tolist() == [128.0]  # no preprocessing layer: grey 128
    assert result.grid.shape == (1, 10, 10)
    for r, c in np.ndindex(10, 10):
        overlaps = r + 3 > 4 and r < 8 and c + 3 > 6 and c < 10
        if overlaps:  # 128 replaces 255 on part of the patch: class 0 loses
            assert result.grid[0, r, c] < result.probability[0] - 1e-3
        else:
            np.testing.assert_allclose(result.grid[0, r, c], result.probability[0], rtol=1e-6)
    lowest = np.unravel_index(np.argmin(result.heatmap[0]), (12, 12))
    assert 4 <= lowest[0] < 8 and 6 <= lowest[1] < 10
    np.testing.assert_allclose(result.heatmap[0, 0, 0], result.probability[0], rtol=1e-6)  # no square there counts


@agnostic
def test_occlusion_fills_with_the_models_mean_pixel():
    from hybrid_keras.layers import Preprocessing

    for mode, expected in (("caffe", [123.68, 116.779, 103.939]), ("torch", [123.675, 116.28, 103.53]),
                           ("tf", [127.5] * 3), ("none", [128.0] * 3)):
        x = keras.Input((8, 8, 3))
        y = layers.GlobalAveragePooling2D()(Preprocessing(mode)(x))
        model = keras.Model(x, layers.Dense(3)(y))
        np.testing.assert_allclose(explain.mean_pixel(model), expected, rtol=1e-5)


def _channel_model():
    """Class c's score is 2 * (c + 1) times the mean of channel c of a 1x1 ReLU convolution."""
    x = keras.Input((8, 8, 2))
    y = layers.Conv2D(2, 1, activation="relu", use_bias=False, name="features")(x)
    y = layers.GlobalAveragePooling2D()(y)
    y = layers.Dense(2, use_bias=False, activation="softmax", name="predictions")(y)
    model = keras.Model(x, y)
    model.get_layer("features").set_weights([np.eye(2, dtype="float32")[None, None]])
    model.get_layer("predictions").set_weights([np.diag([2.0, 4.0]).astype("float32")])
    return model


@agnostic
def test_grad_cam_follows_the_channel_each_class_reads():
    model = _channel_model()
    image = np.zeros((8, 8, 2), "float32")
    image[0:3, 0:3, 0] = 5.0  # channel 0 (class 0) bright top-left, stronger
    image[5:8, 4:8, 1] = 1.0  # channel 1 (class 1) bottom-right
    top = grad_cam(model, np.stack([image, image]))
    assert top.layer == "features" and top.class_index.tolist() == [0, 0]
    # Grad-CAM of a conv -> global average -> dense net is the class activation map / (h w).
    np.testing.assert_allclose(top.cam[0], image[..., 0] * 2.0 / 64, rtol=1e-5, atol=1e-7)
    both = grad_cam(model, np.stack([image, image]), class_index=[0, 1])
    np.testing.assert_allclose(both.cam, [image[..., 0] * 2.0 / 64, image[..., 1] * 4.0 / 64], rtol=1e-5, atol=1e-7)
    assert both.heatmap.shape == (2, 8, 8)
    assert np.unravel_index(np.argmax(both.heatmap[0]), (8, 8))[0] < 3
    assert np.unravel_index(np.argmax(both.heatmap[1]), (8, 8))[0] >= 5


@agnostic
def test_bad_input_is_refused():
    model = _channel_model()
    with pytest.raises(ValueError, match="images must be"):
        grad_cam(model, np.zeros((8, 8, 2), "float32"))
    with pytest.raises(ValueError, match="axis 3"):
        grad_cam(model, np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="close: features"):
        deconvnet(model, np.zeros((1, 8, 8, 2), "float32"), "feature")
    with pytest.raises(ValueError, match="rule must be"):
        deconvnet(model, np.zeros((1, 8, 8, 2), "float32"), "features", rule="backprop")
    with pytest.raises(ValueError, match="class_index must be"):
        grad_cam(model, np.zeros((1, 8, 8, 2), "float32"), class_index=2)
    with pytest.raises(ValueError, match="size must be"):
        occlusion(model, np.zeros((1, 8, 8, 2), "float32"), size=9)


def test_rewire_reaches_nested_models():
    inner_input = keras.Input((8, 8, 4))
    inner = keras.Model(inner_input, layers.ReLU(name="deep")(layers.Conv2D(4, 3, padding="same")(inner_input)))
    stack = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, padding="same", activation="relu"), inner],
                             name="stack")
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, layers.Dense(2)(layers.GlobalAveragePooling2D()(stack(x))))
    copy = explain.rewire(model, "guided", layer="stack")
    copied_stack = copy.get_layer("stack")
    assert isinstance(copied_stack.layers[-1].layers[-1], RectifiedReLU)  # two models deep
    assert copied_stack.layers[0].__class__.__name__ == "_CallWithActivation"  # activation="relu"
    images = np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(copy(images)[1]), ops.convert_to_numpy(model(images)), atol=1e-6)


def test_deconvnet_on_a_branching_zoo_model():
    """MobileNetV2 (residual adds, ReLU6 layers, batch norm, Preprocessing) at 32x32: the copy
    shares the weights and computes the same output; projections have the input's shape."""
    import zoo

    model = zoo.load("mobilenet_v2", weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=4)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    copy = explain.rewire(model, "deconvnet", layer="block_2_add")
    relus = sum(isinstance(layer, keras.layers.ReLU) for layer in model.layers)
    assert relus == 35 and sum(isinstance(layer, RectifiedReLU) for layer in copy.layers) == relus
    np.testing.assert_allclose(ops.convert_to_numpy(copy(images, training=False)[1]),
                               ops.convert_to_numpy(model(images, training=False)), rtol=1e-5, atol=1e-6)
    result = deconvnet(model, images, "block_2_add", top_k=None)
    assert result.pixels.shape == images.shape and np.all(np.isfinite(result.pixels))
    assert np.abs(result.pixels).max() > 0


def test_cli_writes_pngs(tmp_path):
    from PIL import Image

    from hybrid_keras.cli import main

    model_path = tmp_path / "net.keras"
    k1, b1, k2, b2, images = _weights(0)
    _net(k1, b1, k2, b2).save(model_path)
    image_path = tmp_path / "photo.png"
    Image.fromarray((images[0] * 255).astype(np.uint8)).resize((20, 16)).save(image_path)  # resized to 12x12
    for method, layer in (("deconvnet", ["--layer", "conv1"]), ("occlusion", ["--size", "4"]), ("gradcam", [])):
        out = tmp_path / method
        assert main(["explain", str(model_path), str(image_path), "--method", method, "--out", str(out), *layer]) == 0
        with Image.open(out / f"photo_{method}.png") as png:
            panels = 2 if method == "deconvnet" else 3  # 12x12 panels enlarged 14 times, side by side, titled
            assert png.mode == "RGB" and png.size == (panels * 168 + (panels - 1) * 4, 168 + 14)
        summary = json.loads((out / f"explain_{method}.json").read_text())
        assert summary[str(image_path)]["png"].endswith(f"photo_{method}.png")
    assert summary[str(image_path)]["layer"] == "relu2"  # Grad-CAM's default: the last feature map
