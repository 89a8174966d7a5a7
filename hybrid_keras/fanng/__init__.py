"""FANNG nearest-neighbour search: C++ TensorFlow ops (``ops``), the ``FanngIndex``
built on them, and the ``KNNClassifier`` head over labelled embeddings.

``python -m hybrid_keras.fanng.build`` compiles the ops; importing this package does
not load them (that happens on first use), so the build itself can import it.
"""


def __getattr__(name):
    # Lazy, so that `python -m hybrid_keras.fanng.build` does not import TensorFlow twice over.
    if name in ("FanngIndex", "IndexFormatError"):
        from hybrid_keras.fanng import index

        return getattr(index, name)
    if name == "KNNClassifier":
        from hybrid_keras.fanng.knn import KNNClassifier

        return KNNClassifier
    raise AttributeError(f"module 'hybrid_keras.fanng' has no attribute {name!r}")


__all__ = ["FanngIndex", "IndexFormatError", "KNNClassifier"]
