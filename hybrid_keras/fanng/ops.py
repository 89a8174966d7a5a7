"""Loader and thin wrappers for the FANNG custom ops (``HybridKeras>FanngBuild`` / ``FanngSearch``).

The ops are pure functions over plain tensors: an index is ``vectors`` [N, D] float32,
``neighbours`` [N, max_degree] int32 (shortest edge first, -1 padded) and an ``entry``
vertex. Distances are squared L2 (``metric="l2"``) or the negative inner product
(``metric="ip"``), so smaller is always closer.

The shared library is compiled from ``hybrid_keras/fanng/ops/*.cc`` by
``python -m hybrid_keras.fanng.build`` (``./dev.sh setup`` runs it).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

from hybrid_keras.fanng.build import LIBRARY_PATH

METRICS = ("l2", "ip")

_BUILD_HINT = (
    "run `python -m hybrid_keras.fanng.build` (or `./dev.sh setup`) to compile it for the installed TensorFlow"
)
_load_lock = threading.Lock()


def library_path() -> Path:
    """Path of the compiled op library (it may not exist yet)."""
    return Path(LIBRARY_PATH)


@functools.lru_cache(maxsize=None)
def _load():
    import tensorflow as tf

    path = library_path()
    if not path.exists():
        raise RuntimeError(f"the FANNG op library {path} is missing; {_BUILD_HINT}.")
    try:
        return tf.load_op_library(str(path))
    except Exception as error:  # tf raises NotFoundError/others for ABI or symbol mismatches
        raise RuntimeError(
            f"the FANNG op library {path} failed to load ({type(error).__name__}: {error}); it was probably "
            f"built against another TensorFlow: {_BUILD_HINT}."
        ) from error


def load_library():
    """The loaded op module (cached). Raises RuntimeError with a build hint when unusable."""
    with _load_lock:
        return _load()


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _tensor(value, name: str, dtype: str, rank: int, rank_rule: str):
    """A ``dtype`` ("float32" or "int32") tensor of ``rank``. NumPy/list values of the right
    kind are cast (integers must fit int32); tensors must already have ``dtype``."""
    import tensorflow as tf

    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype != dtype:
            raise TypeError(f"{name} must be {dtype}, got a {value.dtype.name} tensor")
        tensor = tf.convert_to_tensor(value)
    else:
        array = np.asarray(value)
        if dtype == "float32" and array.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point values, got dtype {array.dtype}")
        if dtype == "int32":
            if array.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
            if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
                raise ValueError(f"{name} has values outside the int32 range")
        tensor = tf.convert_to_tensor(array.astype(dtype, copy=False))
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{name} must {rank_rule}, got shape {tensor.shape}")
    return tensor


def _float_matrix(value, name: str):
    return _tensor(value, name, "float32", 2, "be a matrix [rows, dim]")


def _int_tensor(value, name: str, rank: int):
    return _tensor(value, name, "int32", rank, f"have rank {rank}")


def build_graph(vectors, max_degree: int = 32, metric: str = "l2", seed: int = 0, candidates: int | None = None,
                refine_iterations: int = 1, connect: bool = True):
    """Build a FANNG graph over the rows of ``vectors``.

    Returns ``(neighbours, entry)``: an int32 [N, max_degree] tensor of out-edges (shortest
    first, -1 padded) and the int32 scalar start vertex. ``candidates`` is the length of a
    vertex's candidate list before occlusion pruning, half approximate nearest neighbours and
    half reverse neighbours (None: max(2 * max_degree, 32));
    ``refine_iterations`` the number of traverse-add passes; ``connect`` makes every vertex
    reachable from ``entry``. The result depends on ``seed`` only, not on the thread count.
    """
    module = load_library()
    return module.hybrid_keras_fanng_build(
        vectors=_float_matrix(vectors, "vectors"),
        max_degree=int(max_degree),
        metric=_check_metric(metric),
        seed=int(seed),
        candidates=0 if candidates is None else int(candidates),
        refine_iterations=int(refine_iterations),
        connect=bool(connect),
    )


def search(vectors, neighbours, entry, queries, k: int = 10, budget: int = 1000, ef: int = 0, metric: str = "l2",
           check_vectors: bool = True):
    """Approximate k nearest rows of ``vectors`` for each row of ``queries``.

    ``budget`` caps the distance computations per query. With ``ef=0`` it is the only
    stopping rule, as in the paper (a budget >= N is exhaustive over everything reachable
    from ``entry``); ``ef > 0`` also stops a query once no unexplored vertex is closer than
    the ``max(ef, k)`` best seen, like hnswlib's ``ef``. Returns ``(ids, distances)``, int32 and float32
    [Q, k], nearest first, padded with -1 / +inf when fewer than k were found.
    ``check_vectors=False`` skips the per-call NaN/inf scan of all of ``vectors`` (it reads
    the whole index, which dominates calls with few queries); use it only for vectors that
    were already checked, e.g. by ``build_graph``. All other checks always run.
    """
    module = load_library()
    return module.hybrid_keras_fanng_search(
        vectors=_float_matrix(vectors, "vectors"),
        neighbours=_int_tensor(neighbours, "neighbours", 2),
        entry=_int_tensor(entry, "entry", 0),
        queries=_float_matrix(queries, "queries"),
        k=_int_tensor(k, "k", 0),
        budget=_int_tensor(budget, "budget", 0),
        ef=_int_tensor(ef, "ef", 0),
        metric=_check_metric(metric),
        check_vectors=bool(check_vectors),
    )
