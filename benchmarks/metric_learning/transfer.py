"""New classes by examples: an embedding trained on half the classes, the other half from a few examples.

The talk's transfer experiment, on MNIST (the 10k test digits in the data folder: first
8,000 for training and support examples, last 2,000 for test) or, harder, CIFAR-10 JPEG
(1,000 photos: 70 per class for training and support, 30 for test; trained on airplane,
automobile, bird, cat, deer; new: dog, frog, horse, ship, truck). Every network is a zoo
MobileNetV2 (alpha 0.35, random init, raw 32x32 pixels in), trained on classes 0-4 only,
each for the same wall-clock budget (``--seconds``):

1. **softmax**: a 5-class softmax classifier; for the new classes 5-9, a new softmax head is
   trained on its pooled features of the few support examples (the backbone frozen).
2. **triplet, in-batch**: an embedding (64-d, unit length) trained with
   ``TripletSemiHardLoss`` on random batches; the new classes are classified by the
   Gaussian-kernel ``KNNClassifier`` over the support examples' embeddings.
3. **triplet, FANNG-mined**: the same, on ``HardNegativeBatches`` re-mined with the FANNG
   index after every epoch (each anchor beside its nearest other-class examples).

Reports accuracy on the test images of the new classes against examples per class (1, 5,
20; mean and spread over ``--draws`` random support sets), accuracy on the seen classes
(kNN over 20 stored examples per class for the embeddings), and the time to add a class
(kNN: store its examples; softmax: retrain the head). Writes
``metric_learning_transfer_<dataset>.json`` and ``.png``.

    ./dev.sh bench benchmarks/metric_learning/transfer.py [--dataset mnist|cifar10] [--seconds 150] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, machine, save_figure, write_json  # noqa: E402
from benchmarks.forest.classification_heads import cifar, mnist  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
SEEN, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
SHOTS = (1, 5, 20)
EMBEDDING_DIM = 64


def backbone(**kwargs):
    import keras

    import zoo

    model = zoo.load("mobilenet_v2", alpha=0.35, input_shape=(32, 32, 3), **kwargs)
    for layer in model.layers:  # short runs from scratch: faster-moving BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def train_softmax(args, images, labels):
    import keras

    from hybrid_keras.callbacks import TimeBudget

    model = backbone(classes=len(SEEN))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(images, labels, batch_size=64, epochs=1000, callbacks=[TimeBudget(args.seconds)], verbose=0)
    features = keras.Model(model.input, model.get_layer("global_average_pooling2d").output)
    return model, features, {"seconds": time.perf_counter() - start, "epochs": len(history.history["loss"])}


def train_embedding(args, images, labels, mined: bool):
    import keras

    from hybrid_keras.callbacks import TimeBudget
    from hybrid_keras.metric_learning import HardNegativeBatches, HardNegativeMining, TripletSemiHardLoss, embedding_model

    model = embedding_model(backbone(include_top=False), dim=EMBEDDING_DIM)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletSemiHardLoss(margin=0.5))
    callbacks = [TimeBudget(args.seconds)]
    start = time.perf_counter()
    if mined:
        batches = HardNegativeBatches(images, labels, batch_size=96, negatives=1, search="fanng", seed=args.seed)
        callbacks.insert(0, HardNegativeMining(batches))
        history = model.fit(batches, epochs=1000, callbacks=callbacks, verbose=0)
        extra = {"remines": batches.remines}
    else:
        history = model.fit(images, labels, batch_size=96, epochs=1000, callbacks=callbacks, verbose=0)
        extra = {}
    return model, {"seconds": time.perf_counter() - start, "epochs": len(history.history["loss"]), **extra}


def support_draws(labels, classes, shots, draws, rng):
    """``draws`` lists of support indices: ``shots`` random examples of each class."""
    return [np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in classes])
            for _ in range(draws)]


def knn_accuracy(embed, support_x, support_y, query_x, query_y):
    from hybrid_keras.fanng import KNNClassifier

    support = np.asarray(embed(support_x))
    head = KNNClassifier.from_examples(support, support_y, num_classes=10, k=min(10, len(support)))
    predicted = np.asarray(head(np.asarray(embed(query_x)))).argmax(1)
    return float(np.mean(predicted == query_y))


def softmax_head_accuracy(features, support_x, support_y, query_x, query_y, seed):
    """A new softmax head trained on the support examples' frozen features."""
    import keras

    keras.utils.set_random_seed(seed)
    support, queries = np.asarray(features(support_x)), np.asarray(features(query_x))
    head = keras.Sequential([keras.Input((support.shape[1],)), keras.layers.Dense(10, activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    head.fit(support, support_y, epochs=200, batch_size=64, verbose=0)
    return float(np.mean(head.predict(queries, verbose=0).argmax(1) == query_y))


def main(argv=None):
    import keras

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seconds", type=float, default=150.0, help="training budget of each network")
    parser.add_argument("--draws", type=int, default=5, help="random support sets per shot count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 s budgets, 2 draws, fewer images: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.draws = 10.0, 2
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    (train_x, train_y), (test_x, test_y) = (mnist if args.dataset == "mnist" else cifar)(args.data, args.quick)
    seen_train = np.isin(train_y, SEEN)
    seen_test, new_test = np.isin(test_y, SEEN), np.isin(test_y, NEW)

    def predict_fn(model):
        return lambda x: model.predict(x, batch_size=256, verbose=0)

    methods = {}
    softmax, features, info = train_softmax(args, train_x[seen_train], train_y[seen_train])
    methods["softmax"] = {"training": info, "embed": predict_fn(features),
                          "seen_accuracy": float(np.mean(softmax.predict(test_x[seen_test], verbose=0).argmax(1)
                                                         == test_y[seen_test]))}
    for title, mined in (("triplet, in-batch", False), ("triplet, FANNG-mined", True)):
        model, info = train_embedding(args, train_x[seen_train], train_y[seen_train], mined)
        methods[title] = {"training": info, "embed": predict_fn(model)}
    seen_support = support_draws(train_y, SEEN, 20, 1, rng)[0]
    for title, entry in methods.items():
        if "seen_accuracy" not in entry:
            entry["seen_accuracy"] = knn_accuracy(entry["embed"], train_x[seen_support], train_y[seen_support],
                                                  test_x[seen_test], test_y[seen_test])

    results = {"machine": machine(), "backend": keras.backend.backend(), "budget_seconds": args.seconds,
               "data": f"{args.dataset}: train/support {len(train_x)}, test {len(test_x)}; classes seen {SEEN}, new {NEW}",
               "model": "zoo mobilenet_v2 alpha 0.35, random init, 32x32 RGB", "draws": args.draws, "methods": {}}
    for title, entry in methods.items():
        scores = {}
        for shots in SHOTS:
            accuracies = []
            for draw, support in enumerate(support_draws(train_y, NEW, shots, args.draws, rng)):
                if title == "softmax":
                    accuracies.append(softmax_head_accuracy(entry["embed"], train_x[support], train_y[support],
                                                            test_x[new_test], test_y[new_test], args.seed + draw))
                else:
                    accuracies.append(knn_accuracy(entry["embed"], train_x[support], train_y[support],
                                                   test_x[new_test], test_y[new_test]))
            scores[str(shots)] = {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies))}
        results["methods"][title] = {"training": entry["training"], "seen_accuracy": entry["seen_accuracy"],
                                     "new_classes_accuracy": scores}
        print(f"{title}: seen {entry['seen_accuracy']:.3f}; new "
              + ", ".join(f"{s}-shot {v['mean']:.3f}" for s, v in scores.items()), flush=True)
    results["add_a_class_seconds"] = add_a_class_seconds(methods, train_x, train_y, args.seed)
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    write_json(results_dir / f"metric_learning_transfer_{args.dataset}.json", results)
    plot(results, results_dir / f"metric_learning_transfer_{args.dataset}.png", args.dataset)
    print(json.dumps(results["add_a_class_seconds"]))


def add_a_class_seconds(methods, train_x, train_y, seed):
    """Seconds to make class 9 known from 20 examples: kNN stores their embeddings (exact and
    FANNG backends, beside 20 stored examples of each of 0-8); softmax retrains its head."""
    from hybrid_keras.fanng import KNNClassifier

    rng = np.random.default_rng(seed)
    known = support_draws(train_y, tuple(range(9)), 20, 1, rng)[0]
    new = rng.choice(np.flatnonzero(train_y == 9), 20, replace=False)
    embed = methods["triplet, FANNG-mined"]["embed"]
    stored, added = np.asarray(embed(train_x[known])), np.asarray(embed(train_x[new]))
    timings = {}
    for backend in ("exact", "fanng"):
        head = KNNClassifier.from_examples(stored, train_y[known], num_classes=10, backend=backend)
        start = time.perf_counter()
        head.add_examples(added, train_y[new])
        timings[f"knn_{backend}"] = time.perf_counter() - start
    start = time.perf_counter()
    both = np.concatenate([known, new])
    softmax_head_accuracy(methods["softmax"]["embed"], train_x[both], train_y[both], train_x[new], train_y[new], seed)
    timings["softmax_head_retrained"] = time.perf_counter() - start
    return timings


def plot(results, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for title, entry in results["methods"].items():
        scores = entry["new_classes_accuracy"]
        axis.errorbar(SHOTS, [scores[str(s)]["mean"] for s in SHOTS], yerr=[scores[str(s)]["std"] for s in SHOTS],
                      marker="o", capsize=3, label=f"{title} (seen {entry['seen_accuracy']:.2f})")
    axis.set_xscale("log")
    axis.set_xticks(SHOTS, [str(s) for s in SHOTS])
    axis.set_xlabel("examples per new class")
    axis.set_ylabel("accuracy on the new classes 5-9")
    axis.set_title(f"{dataset}: trained on classes 0-4 for {results['budget_seconds']:.0f} s each")
    axis.legend(fontsize=8)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
