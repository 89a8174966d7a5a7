"""The end-to-end demo (``hybrid-keras demo``): real shipped images, a zoo model,
hybrid heads, and a verified TF Serving export.

Steps: fine-tune a zoo MobileNetV2 with a softmax head; put a decision forest on its
pooled features; put a Gaussian-kernel kNN head on its embeddings and teach it digit 9
from 20 examples; export all three heads in one SavedModel for TF Serving.

Data: the 10,000 MNIST test images that ship in ``hybrid_keras/demo_data/mnist``, read
through the project's TFDS builder (``hybrid_keras.datasets``, the features of TFDS's
``mnist``), split by index into train (first 8,000) and test (last 2,000). Digits 0-8
are the classes the network trains on; digit 9 is held back as the class a kNN head
later learns from a handful of examples, without retraining. The model takes the raw
pixels: its first layer normalises them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

KNOWN_CLASSES = 9  # digits 0-8; digit 9 is the "new" class
IMAGE_SIZE = 32  # MNIST's 28x28 padded to 32, the smallest input MobileNetV2 takes
EXAMPLES_PER_CLASS = 20  # the kNN head's memory per digit, the new digit 9 included


def load_digits(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The shipped MNIST digits as uint8 RGB [N, 32, 32, 3] (zero-padded, grey repeated) and labels [N]."""
    from hybrid_keras import datasets

    pairs = datasets.image_label_pairs(datasets.load("mnist", split=split), image_size=(IMAGE_SIZE, IMAGE_SIZE),
                                       method="pad", rgb=True)
    return datasets.to_numpy(pairs)


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(out_dir: str = "saved_models/demo", quick: bool = False, seed: int = 0) -> dict:
    """Run the demo; returns the figures it printed."""
    import keras

    import zoo
    from hybrid_keras.export import export_saved_model, serving_command
    from hybrid_keras.fanng import KNNClassifier
    from hybrid_keras.forest import ForestLayer, extract_features, train_forest
    from hybrid_keras.layers import L2Normalize

    keras.utils.set_random_seed(seed)
    results: dict = {}
    started = time.time()

    _step("Data: 10,000 real MNIST digits shipped with the project, through its TFDS builder")
    images, labels = load_digits()
    n_train = 4000 if quick else 8000
    train_x, train_y = images[:n_train], labels[:n_train]
    test_x, test_y = images[8000:], labels[8000:]
    known_train = train_y < KNOWN_CLASSES
    known_test = test_y < KNOWN_CLASSES
    print(f"train {int(known_train.sum())} images of digits 0-8, test {int(known_test.sum())}; "
          f"digit 9 ({int((~known_train).sum())} train / {int((~known_test).sum())} test images) is held back")

    _step("Model: zoo.load('mobilenet_v2', alpha=0.35) with a new 9-class top, trained with model.fit")
    model = zoo.load("mobilenet_v2", weights=None, alpha=0.35, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes=KNOWN_CLASSES)
    # keras.applications' BN momentum (0.999) suits long ImageNet runs; in a few hundred
    # steps from scratch the moving statistics would still be far from the data's.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x_fit, x_test = train_x[known_train], test_x[known_test]  # raw pixels: the model normalises them
    # The optimizer's slots and the metric's counters exist before fit: TensorFlow then traces
    # the train step once, not again after creating them inside the first trace.
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.optimizer.build(model.trainable_variables)
    epochs = 4 if quick else 6
    fit_start = time.time()
    model.fit(x_fit, train_y[known_train], batch_size=64, epochs=epochs, validation_split=0.1, verbose=2)
    results["softmax_train_seconds"] = round(time.time() - fit_start, 1)
    _, accuracy = model.evaluate(x_test, test_y[known_test], verbose=0)
    results["softmax_test_accuracy"] = float(accuracy)
    print(f"softmax head: test accuracy {accuracy:.4f} on digits 0-8 ({results['softmax_train_seconds']} s of training)")

    _step("Forest head: a random forest on the network's pooled features, compiled into the Keras graph")
    pooled = model.get_layer("global_average_pooling2d").output
    backbone = keras.Model(model.input, pooled, name="mobilenet_v2_features")
    forest_start = time.time()
    features, feature_labels = extract_features(backbone, (x_fit, train_y[known_train]), batch_size=256, verbose=0)
    forest_model = train_forest(features, feature_labels, num_trees=100 if not quick else 20, max_depth=16, verbose=0)
    forest = ForestLayer.from_model(forest_model, mode="log_sum", num_classes=KNOWN_CLASSES, name="forest_head")
    results["forest_train_seconds"] = round(time.time() - forest_start, 1)
    forest_classifier = keras.Model(model.input, forest(pooled), name="mobilenet_v2_forest")
    forest_probabilities = forest_classifier.predict(x_test, batch_size=256, verbose=0)
    results["forest_test_accuracy"] = float(np.mean(forest_probabilities.argmax(-1) == test_y[known_test]))
    print(f"forest head ({forest.num_trees} trees, log_sum): test accuracy {results['forest_test_accuracy']:.4f} "
          f"({results['forest_train_seconds']} s of extraction and training) vs softmax {accuracy:.4f}")

    _step(f"kNN head: embeddings (pooled features, L2-normalised), {EXAMPLES_PER_CLASS} stored examples per digit")
    embedder = keras.Model(model.input, L2Normalize(name="embedding")(pooled), name="mobilenet_v2_embedding")
    # A balanced memory: with hundreds of 4s and 7s stored, a new class with a handful of
    # examples would be outvoted by sheer numbers among the k nearest.
    memory = np.concatenate([np.flatnonzero(train_y == digit)[:EXAMPLES_PER_CLASS] for digit in range(KNOWN_CLASSES)])
    stored = embedder.predict(train_x[memory], batch_size=256, verbose=0)
    knn = KNNClassifier.from_examples(stored, train_y[memory], num_classes=KNOWN_CLASSES + 1, k=10,
                                      capacity=len(stored) + EXAMPLES_PER_CLASS, name="knn_head")
    test_embeddings = embedder.predict(test_x, batch_size=256, verbose=0)
    knn_predictions = knn(test_embeddings[known_test]).numpy().argmax(-1)
    results["knn_test_accuracy"] = float(np.mean(knn_predictions == test_y[known_test]))
    print(f"kNN head over {len(stored)} stored examples (k=10, sigma {knn.sigma:.3f}): "
          f"test accuracy {results['knn_test_accuracy']:.4f} on digits 0-8")

    _step(f"A new class by examples alone: {EXAMPLES_PER_CLASS} images of digit 9, no retraining")
    nines = np.flatnonzero(~known_train)[:EXAMPLES_PER_CLASS]
    knn.add_examples(embedder.predict(train_x[nines], verbose=0), train_y[nines])
    all_predictions = knn(test_embeddings).numpy().argmax(-1)
    results["knn_new_class_recall"] = float(np.mean(all_predictions[~known_test] == KNOWN_CLASSES))
    results["knn_test_accuracy_all_digits"] = float(np.mean(all_predictions == test_y))
    print(f"digit 9 recognised in {results['knn_new_class_recall']:.1%} of its {int((~known_test).sum())} test images; "
          f"accuracy over all ten digits {results['knn_test_accuracy_all_digits']:.4f}")

    _step("Export for TF Serving (softmax, forest and kNN heads in one graph), verified in a fresh TensorFlow-only process")
    hybrid = keras.Model(model.input, [model.output, forest(pooled), knn(embedder.output)], name="mobilenet_v2_hybrid")
    version = 1 + max((int(p.name) for p in Path(out_dir).glob("*") if p.name.isdigit()), default=0)
    path = export_saved_model(hybrid, Path(out_dir) / str(version), verify_inputs=test_x[:8])
    results["saved_model"] = str(path)
    print(f"wrote {path} (signatures serving_default, serve_uint8, serve_image_bytes; "
          f"outputs {', '.join(hybrid.output_names)})")
    print("serve it with:\n  " + serving_command(path))

    results["total_seconds"] = round(time.time() - started, 1)
    _step(f"Done in {results['total_seconds']} s")
    return results
