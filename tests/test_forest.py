"""Compiled decision forests: equal to the libraries' own predictions, trainable, saveable.

Tests marked ``backend_agnostic`` run under every Keras backend (TensorFlow, JAX,
PyTorch) and need no TensorFlow; the rest (TF-DF, SavedModel export) import it inside.
"""

import keras
import numpy as np
import pytest
import ydf

import hybrid_keras as hk
from hybrid_keras.forest import (
    ForestLayer,
    UnsupportedForestError,
    attach,
    extract_features,
    extract_pixel_features,
    sample_pixels,
    train_forest,
)

NATIVE_TOLERANCE = 1e-5

backend_agnostic = pytest.mark.backend_agnostic
# SavedModel export and the TF-DF Keras model need the TensorFlow backend.
tensorflow_backend = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs KERAS_BACKEND=tensorflow")


def _np(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _dataset(task, rng, rows=1500, features=10, missing=0.05):
    """Features with some NaN, and a label that depends on a few of them non-linearly."""
    x = rng.normal(size=(rows, features)).astype(np.float32)
    clean = x.copy()
    x[rng.random(x.shape) < missing] = np.nan
    score = clean[:, 0] + clean[:, 1] * clean[:, 2] - 0.5 * clean[:, 3]
    if task == "binary":
        return x, (score > 0).astype(np.int64)
    if task == "multiclass":
        return x, np.digitize(score, [-1.0, 0.0, 1.0]).astype(np.int64)
    return x, (3.0 * score + 1.0).astype(np.float32)


def _native_probabilities(model, x, task):
    """The library's own prediction as [rows, outputs] (binary: [P(0), P(1)])."""
    predicted = np.asarray(model.predict({"features": x}) if type(model).__module__.startswith("ydf")
                           else model.predict(x, verbose=0))
    if task == "binary":
        positive = predicted.reshape(-1)
        return np.stack([1 - positive, positive], axis=1)
    return predicted.reshape(len(x), -1)


@backend_agnostic
@pytest.mark.parametrize("strategy", ["gather", "gemm"])
@pytest.mark.parametrize("kind", ["random_forest", "gradient_boosted_trees"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_native_mode_reproduces_ydf(task, kind, strategy, rng):
    x, y = _dataset(task, rng)
    held_out, _ = _dataset(task, np.random.default_rng(99), rows=400)
    held_out[:10, :4] = np.inf  # infinities are ordinary values: x >= t decides
    held_out[10:20, :4] = -np.inf
    model = train_forest(x[:1100], y[:1100], kind=kind, task="regression" if task == "regression" else "classification",
                         num_trees=15, max_depth=6, verbose=0)
    layer = ForestLayer.from_model(model, strategy=strategy)
    assert layer.strategy == strategy
    expected = _native_probabilities(model, held_out, task)
    np.testing.assert_allclose(_np(layer(held_out)), expected, atol=NATIVE_TOLERANCE, rtol=0)


@backend_agnostic
@pytest.mark.parametrize("kind", ["random_forest", "gradient_boosted_trees"])
def test_deep_forest_native_equivalence_eager_and_compiled(kind, rng):
    # 1,500 rows grow trees as deep as 3,000 did (depth 19 for seeds 1234, 1, 2) in half the
    # gradient boosting time.
    x, y = _dataset("multiclass", rng, rows=1500, features=16)
    model = train_forest(x, y, kind=kind, num_trees=8, max_depth=20, min_examples=2, verbose=0)
    layer = ForestLayer.from_model(model)
    assert layer.strategy == "gather" and layer.max_depth > 10
    held_out, _ = _dataset("multiclass", np.random.default_rng(5), rows=500, features=16)
    expected = _native_probabilities(model, held_out, "multiclass")
    np.testing.assert_allclose(_np(layer(held_out)), expected, atol=NATIVE_TOLERANCE, rtol=0)
    inputs = keras.Input((16,))
    compiled = keras.Model(inputs, layer(inputs))  # predict runs it jit-compiled (tf.function / jax.jit / torch)
    np.testing.assert_allclose(compiled.predict(held_out, batch_size=128, verbose=0), expected,
                               atol=NATIVE_TOLERANCE, rtol=0)


@backend_agnostic
def test_random_forest_without_voting_averages_distributions(rng):
    x, y = _dataset("multiclass", rng)
    model = train_forest(x, y, num_trees=10, max_depth=8, winner_take_all=False, verbose=0)
    assert not model.winner_takes_all()
    layer = ForestLayer.from_model(model)
    np.testing.assert_allclose(_np(layer(x[:300])), _native_probabilities(model, x[:300], "multiclass"),
                               atol=NATIVE_TOLERANCE, rtol=0)


@tensorflow_backend
@pytest.mark.parametrize("kind,task", [("random_forest", "multiclass"), ("gradient_boosted_trees", "binary")])
def test_native_mode_reproduces_tfdf(kind, task, rng):
    x, y = _dataset(task, rng, rows=800, features=12)
    model = train_forest(x, y, kind=kind, backend="tfdf", num_trees=10, max_depth=6, verbose=0)
    layer = ForestLayer.from_model(model)
    # TF-DF names the columns "data:0.0", "data:0.1", "data:0.10", ...: the layer must
    # still take them in their original order.
    assert layer.feature_names[:3] == ["data:0.0", "data:0.1", "data:0.2"] and layer.feature_order_known
    held_out, _ = _dataset(task, np.random.default_rng(3), rows=300, features=12)
    np.testing.assert_allclose(_np(layer(held_out)), _native_probabilities(model, held_out, task),
                               atol=NATIVE_TOLERANCE, rtol=0)


def _named_columns(rng, rows):
    """A DataFrame with columns f0..f11 whose label needs f10 and f11, so a column mix-up shows."""
    import pandas as pd

    frame = pd.DataFrame({f"f{i}": rng.normal(size=rows).astype(np.float32) for i in range(12)})
    frame["label"] = (frame.f0 + frame.f2 * frame.f3 - frame.f11 + 0.5 * frame.f10 > 0).astype(np.int64)
    return frame


@tensorflow_backend
def test_tfdf_trained_from_a_dataframe_never_reorders_array_columns_silently(rng):
    import tensorflow_decision_forests as tfdf

    frame = _named_columns(rng, 1200)
    train, test = frame[:900], frame[900:]
    model = tfdf.keras.RandomForestModel(num_trees=20, verbose=0)
    model.fit(tfdf.keras.pd_dataframe_to_tf_dataset(train, label="label"), verbose=0)
    native = model.predict(tfdf.keras.pd_dataframe_to_tf_dataset(test, label="label"), verbose=0).reshape(-1)
    expected = np.stack([1 - native, native], axis=1)
    columns = [f"f{i}" for i in range(12)]
    array = test[columns].to_numpy()

    layer = ForestLayer.from_model(model)
    # TF-DF sorted the names as strings and kept no record of the DataFrame's order.
    assert layer.feature_names == sorted(columns) and not layer.feature_order_known
    with pytest.raises(ValueError, match=r"layer.feature_names = \['f0', 'f1', 'f10'"):
        layer(array)  # read in the sorted order it would lose most of the forest's accuracy, with no error
    with pytest.raises(ValueError, match="feature_names"):
        keras.Model(inputs := keras.Input((12,)), layer(inputs))
    # By name: a dict, or the DataFrame itself (extra columns such as the label are ignored).
    np.testing.assert_allclose(_np(layer(dict(test))), expected, atol=NATIVE_TOLERANCE)
    np.testing.assert_allclose(_np(layer(test)), expected, atol=NATIVE_TOLERANCE)
    np.testing.assert_allclose(_np(layer(test[list(reversed(columns))])), expected, atol=NATIVE_TOLERANCE)

    ordered = ForestLayer.from_model(model, feature_names=columns)
    assert ordered.feature_names == columns and ordered.feature_order_known
    np.testing.assert_allclose(_np(ordered(array)), expected, atol=NATIVE_TOLERANCE)
    with pytest.raises(ValueError, match=r"missing \['f11'\].*not features of the model \['label'\]"):
        ForestLayer.from_model(model, feature_names=columns[:11] + ["label"])


@backend_agnostic
def test_ydf_trained_from_a_dataframe_keeps_its_column_order(rng):
    frame = _named_columns(rng, 900)
    columns = [f"f{i}" for i in range(12)]
    model = ydf.RandomForestLearner(label="label", num_trees=10, max_depth=8).train(frame[:700], verbose=0)
    layer = ForestLayer.from_model(model)
    assert layer.feature_names == columns and layer.feature_order_known
    test = frame[700:]
    positive = np.asarray(model.predict(test)).reshape(-1)
    expected = np.stack([1 - positive, positive], axis=1)
    np.testing.assert_allclose(_np(layer(test[columns].to_numpy())), expected, atol=NATIVE_TOLERANCE)
    np.testing.assert_allclose(_np(layer(test[list(reversed(columns))])), expected, atol=NATIVE_TOLERANCE)


def _walk(node, row):
    """Reference traversal of a ydf tree object in plain Python."""
    while hasattr(node, "condition"):
        value = row[node.condition.attribute - 1]  # column 0 of the data spec is the label
        positive = node.condition.missing if np.isnan(value) else value >= node.condition.threshold
        node = node.pos_child if positive else node.neg_child
    return node.value


@backend_agnostic
@pytest.mark.parametrize("strategy", ["gather", "gemm"])
def test_log_sum_matches_a_numpy_reference(strategy, rng):
    x, y = _dataset("multiclass", rng, missing=0.0)
    model = train_forest(x, y, num_trees=6, max_depth=7, verbose=0)
    smoothing = 0.5
    layer = ForestLayer.from_model(model, mode="log_sum", smoothing=smoothing, strategy=strategy)
    rows = x[:50]
    expected = []
    for row in rows:
        total = 0.0
        for tree in model.get_all_trees():
            leaf = _walk(tree.root, row)
            counts = np.asarray(leaf.probability) * leaf.num_examples
            total = total + np.log((counts + smoothing) / (counts.sum() + smoothing * len(counts)))
        expected.append(np.exp(total - total.max()) / np.exp(total - total.max()).sum())
    np.testing.assert_allclose(_np(layer(rows)), np.array(expected), atol=1e-5)
    assert layer.leaf_values.trainable and all(not w.trainable for w in layer.weights if w.name != "leaf_values")


@backend_agnostic
def test_dict_input_and_per_pixel_maps(rng):
    x, y = _dataset("multiclass", rng, missing=0.0, features=6)
    model = train_forest(x, y, num_trees=5, max_depth=5, verbose=0)
    layer = ForestLayer.from_model(model, mode="log_sum")
    flat = _np(layer(x[:24]))
    as_dict = {name: x[:24, i] for i, name in enumerate(layer.feature_names)}
    np.testing.assert_allclose(_np(layer(as_dict)), flat, atol=1e-6)
    feature_map = x[:24].reshape(2, 3, 4, 6)
    per_pixel = _np(layer(feature_map))
    assert per_pixel.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(per_pixel.reshape(24, 4), flat, atol=1e-6)


@backend_agnostic
@pytest.mark.parametrize("strategy", ["gather", "gemm"])
def test_leaf_fine_tuning_lowers_the_training_loss(strategy, rng):
    x, y = _dataset("multiclass", rng, missing=0.0)
    model = train_forest(x[:600], y[:600], num_trees=10, max_depth=4, verbose=0)
    layer = ForestLayer.from_model(model, mode="log_sum", strategy=strategy)
    assert [w.name for w in layer.trainable_weights] == ["leaf_values"]
    structure_before = [w.numpy().copy() for w in layer.non_trainable_weights]
    inputs = keras.Input((x.shape[1],))
    classifier = keras.Model(inputs, layer(inputs))
    classifier.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    before = classifier.evaluate(x, y, verbose=0)
    classifier.fit(x, y, epochs=15, batch_size=128, verbose=0)
    after = classifier.evaluate(x, y, verbose=0)
    assert after < before * 0.9, (before, after)
    for weight, before in zip(layer.non_trainable_weights, structure_before):
        np.testing.assert_array_equal(weight.numpy(), before, err_msg=f"{weight.name} changed")


@backend_agnostic
@pytest.mark.parametrize("strategy", ["gather", "gemm"])
def test_keras_file_round_trip(tmp_path, strategy, rng):
    x, y = _dataset("multiclass", rng)
    layer = ForestLayer.from_model(train_forest(x, y, num_trees=5, max_depth=4, verbose=0), strategy=strategy)
    inputs = keras.Input((x.shape[1],))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "forest.keras")
    loaded = keras.models.load_model(tmp_path / "forest.keras")
    np.testing.assert_array_equal(_np(loaded(x[:100])), _np(model(x[:100])))
    assert loaded.layers[-1].strategy == strategy


def _backbone(size=16, channels=8):
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="conv2")(x)
    return keras.Model(inputs, x, name="tiny")


def _images_and_masks(rng, count=12, size=16, classes=3):
    images = rng.normal(size=(count, size, size, 3)).astype(np.float32)
    # The class of a pixel is read off its first colour channel, so features can learn it.
    masks = np.digitize(images[..., 0], [-0.5, 0.5]).astype(np.int32)
    masks[:, :2, :] = 255  # an ignored border
    return images, masks


@tensorflow_backend
def test_per_image_model_exports_to_a_saved_model(tmp_path, rng):
    import tensorflow as tf

    backbone = _backbone()
    images = rng.normal(size=(40, 16, 16, 3)).astype(np.float32)
    labels = (images[..., 1].mean(axis=(1, 2)) > 0).astype(np.int64)
    features, returned = extract_features(backbone, (images, labels), batch_size=16, verbose=0)
    np.testing.assert_allclose(features, _np(backbone(images)).mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_array_equal(returned, labels)
    forest = ForestLayer.from_model(train_forest(features, labels, num_trees=8, max_depth=5, verbose=0), mode="log_sum")
    model = attach(backbone, forest)
    assert model.output.shape == (None, 2)
    path = hk.export_saved_model(model, tmp_path / "forest" / "1", preprocessing="none")  # verified in a fresh process
    assert not hk.export.uses_custom_ops(path)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(images[:4]))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), _np(model(images[:4])), atol=1e-5)


@backend_agnostic
def test_per_pixel_head_samples_and_trains(rng):
    backbone = _backbone()
    images, masks = _images_and_masks(rng)
    features, labels = extract_pixel_features(backbone, (images, masks), pixels_per_image=20, batch_size=5, verbose=0)
    assert features.shape == (12 * 20, 8) and labels.shape == (240,)
    assert 255 not in labels and set(np.unique(labels)) == {0, 1, 2}
    forest = ForestLayer.from_model(train_forest(features, labels, num_trees=6, max_depth=6, verbose=0), mode="log_sum")
    model = attach(backbone, forest, pooling=None, upsample=False)
    output = _np(model(images[:2]))
    assert output.shape == (2, 8, 8, 3)  # one distribution per cell of the stride-2 feature map
    cells = _np(backbone(images[:2])).reshape(-1, 8)
    np.testing.assert_allclose(output.reshape(-1, 3), _np(forest(cells)), atol=1e-6)
    np.testing.assert_allclose(output.sum(-1), 1.0, atol=1e-5)


@tensorflow_backend
def test_per_pixel_head_upsamples_and_exports_to_a_saved_model(tmp_path, rng):
    backbone = _backbone()
    images, masks = _images_and_masks(rng)
    features, labels = extract_pixel_features(backbone, (images, masks), pixels_per_image=20, batch_size=5, verbose=0)
    forest = ForestLayer.from_model(train_forest(features, labels, num_trees=6, max_depth=6, verbose=0), mode="log_sum")
    model = attach(backbone, forest, pooling=None)
    output = _np(model(images[:2]))
    assert output.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(output.sum(-1), 1.0, atol=1e-5)
    path = hk.export_saved_model(model, tmp_path / "segmentation" / "1", preprocessing="none")
    assert (path / "saved_model.pb").exists()


@backend_agnostic
def test_pixel_sampling_is_class_balanced_and_skips_ignored_pixels():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), np.int32)
    mask[:4] = 2  # a rare class: 200 of 2000 pixels
    mask[-10:] = 255
    chosen = np.concatenate([sample_pixels(mask, 60, rng, ignore_label=255, class_balanced=True) for _ in range(50)])
    classes = mask.reshape(-1)[chosen]
    assert 255 not in classes
    share = np.mean(classes == 2)
    assert 0.4 < share < 0.6, share  # balanced, against 200 / 1500 = 0.13 by plain sampling
    assert len(sample_pixels(np.full((4, 4), 255), 10, rng, ignore_label=255, class_balanced=True)) == 0


@backend_agnostic
def test_pixel_extraction_respects_the_memory_bound(rng):
    images, masks = _images_and_masks(rng)
    with pytest.raises(MemoryError, match="pixels_per_image <="):
        extract_pixel_features(_backbone(), (images, masks), pixels_per_image=1000, max_memory_bytes=10_000, verbose=0)


@backend_agnostic
def test_non_finite_features_give_nan_rows_in_log_sum_mode(rng):
    x, y = _dataset("multiclass", rng, missing=0.0)
    layer = ForestLayer.from_model(train_forest(x, y, num_trees=4, max_depth=4, verbose=0), mode="log_sum")
    clean = _np(layer(x[:6]))
    broken = x[:6].copy()
    broken[1, 3], broken[4, 0] = np.nan, np.inf
    output = _np(layer(broken))
    assert np.isnan(output[[1, 4]]).all()
    np.testing.assert_allclose(output[[0, 2, 3, 5]], clean[[0, 2, 3, 5]], atol=1e-6)


@backend_agnostic
def test_bad_input_gives_clear_errors(rng):
    x, y = _dataset("multiclass", rng)
    model = train_forest(x, y, num_trees=3, max_depth=4, verbose=0)
    native = ForestLayer.from_model(model)
    with pytest.raises(ValueError, match="trained on 10 features but the input has 7"):
        native(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="lacks features"):
        native({"features.00_of_10": x[:, 0]})
    with pytest.raises(TypeError, match="expected a trained ydf or TF-DF model"):
        ForestLayer.from_model(ydf.RandomForestLearner(label="label"))
    isolation = ydf.IsolationForestLearner(num_trees=3).train({"features": np.nan_to_num(x)}, verbose=0)
    with pytest.raises(UnsupportedForestError, match="not supported"):
        ForestLayer.from_model(isolation)
    with pytest.raises(ValueError, match="mode must be"):
        ForestLayer.from_model(model, mode="softmax")
    with pytest.raises(ValueError, match="log_sum"):
        ForestLayer.from_model(train_forest(x, y.astype(np.float32), task="regression", num_trees=2, verbose=0),
                               mode="log_sum")
    with pytest.raises(ValueError, match="labels must be integers"):
        train_forest(x, y.astype(np.float32))
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
        train_forest(x, y, verbose=3)


@tensorflow_backend
def test_untrained_tfdf_model_is_rejected():
    import tensorflow_decision_forests as tfdf

    with pytest.raises(ValueError, match="not trained"):
        ForestLayer.from_model(tfdf.keras.RandomForestModel())


@backend_agnostic
def test_categorical_features_are_rejected(rng):
    data = {"colour": np.array(["red", "green", "blue"] * 30), "size": rng.normal(size=90).astype(np.float32),
            "label": np.array([0, 1, 1] * 30)}
    model = ydf.RandomForestLearner(label="label", num_trees=2).train(data, verbose=0)
    with pytest.raises(UnsupportedForestError, match="CATEGORICAL"):
        ForestLayer.from_model(model)


@backend_agnostic
@pytest.mark.parametrize("kind", ["random_forest", "gradient_boosted_trees"])
@pytest.mark.parametrize("present", [(0, 3), (0, 2, 3)], ids=["binary", "multiclass"])
def test_labels_missing_from_training_get_their_own_empty_column(kind, present, rng):
    """A rare class absent from the pixel sample must not shift the other classes' columns."""
    x, y = _dataset("multiclass", rng, missing=0.0)
    y = np.asarray(present)[y % len(present)]
    model = train_forest(x, y, kind=kind, num_trees=8, max_depth=5, verbose=0)
    layer = ForestLayer.from_model(model, num_classes=5)
    output = _np(layer(x[:200]))
    assert output.shape == (200, 5) and layer.class_names == ["0", "1", "2", "3", "4"]
    expected = _native_probabilities(model, x[:200], "binary" if len(present) == 2 else "multiclass")
    np.testing.assert_allclose(output[:, list(present)], expected, atol=NATIVE_TOLERANCE)
    absent = [c for c in range(5) if c not in present]
    assert np.abs(output[:, absent]).max() < 1e-6
    log_sum = _np(ForestLayer.from_model(model, mode="log_sum", num_classes=5)(x[:200]))
    unspread = _np(ForestLayer.from_model(model, mode="log_sum")(x[:200]))
    np.testing.assert_allclose(log_sum[:, list(present)], unspread, atol=1e-5)
    assert np.abs(log_sum[:, absent]).max() < 1e-6
    with pytest.raises(ValueError, match="do not fit"):
        ForestLayer.from_model(model, num_classes=3)


@backend_agnostic
def test_training_prints_one_line_by_default(rng, capfd):
    x, y = _dataset("multiclass", rng, rows=300, features=300, missing=0.0)
    capfd.readouterr()
    train_forest(x, y, num_trees=3, verbose=0)
    assert capfd.readouterr() == ("", "")
    train_forest(x, y, num_trees=3)
    out, err = capfd.readouterr()
    assert out.count("\n") == 1 and out.startswith("[forest] training random forest (ydf, 3 trees") and err == ""
    train_forest(x, y, num_trees=3, verbose=2)
    out, err = capfd.readouterr()
    assert "Data spec" in out + err and (out + err).count("\n") > 100  # ydf's own logs, its data spec included


@tensorflow_backend
def test_tfdf_training_prints_one_line_by_default(rng, capfd):
    import tensorflow_decision_forests  # noqa: F401  (its import banner is not training output)

    x, y = _dataset("multiclass", rng, rows=200, features=40, missing=0.0)
    capfd.readouterr()
    train_forest(x, y, backend="tfdf", num_trees=3)
    out, err = capfd.readouterr()
    # Unheld, TF-DF logs its data spec on stderr at every verbosity (hundreds of lines for wide features).
    assert out.count("\n") == 1 and out.startswith("[forest] training random forest (tfdf") and err == "", (out, err)
