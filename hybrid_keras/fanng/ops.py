"""Loader and thin wrappers for the FANNG custom ops (``HybridKeras>FanngBuild`` / ``FanngInsert`` /
``FanngSearch``).

The ops are pure functions over plain tensors: an index is ``vectors`` [N, D] (float32,
float16, or uint8 codes standing for ``offset + scale * code``), ``neighbours``
[N, max_degree] int32 (shortest edge first, -1 padded) and its entry points (int32
vertices searches start from). Distances are squared L2 (``metric="l2"``) or the
negative inner product (``metric="ip"``, not for uint8) of the dequantised vectors, so
smaller is always closer. ``build_graph`` builds, ``insert`` links new rows into a built
graph, ``search`` queries.

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


def _check_int(value, name: str, low: int, high: int) -> int:
    """``value`` as a Python int in [low, high]; a clear error otherwise (the op's attributes
    are int64, and an out-of-range value would fail inside TensorFlow's wrapper)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


INT32_MAX = int(np.iinfo(np.int32).max)
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


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


STORAGE_DTYPES = ("float32", "float16", "uint8")


def _stored_vectors(value, name: str = "vectors"):
    """The index's vectors as stored: a float32, float16 or uint8 matrix (uint8 holds codes,
    see ``scale``/``offset``). Other floating NumPy types become float32."""
    import tensorflow as tf

    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype.name not in STORAGE_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or uint8, got a {value.dtype.name} tensor")
        tensor = tf.convert_to_tensor(value)
    else:
        array = np.asarray(value)
        if array.dtype.name not in STORAGE_DTYPES:
            if array.dtype.kind != "f":
                raise TypeError(f"{name} must hold float32, float16 or uint8 values, got dtype {array.dtype}")
            array = array.astype(np.float32)
        tensor = tf.convert_to_tensor(array)
    if tensor.shape.rank is not None and tensor.shape.rank != 2:
        raise ValueError(f"{name} must be a matrix [rows, dim], got shape {tensor.shape}")
    return tensor


def _entry_tensor(value, name: str = "entry"):
    """One entry vertex (scalar) or several (vector)."""
    import tensorflow as tf

    if not isinstance(value, (tf.Tensor, tf.Variable)):
        value = np.asarray(value)
    rank = value.shape.rank if isinstance(value, (tf.Tensor, tf.Variable)) else value.ndim
    if rank is not None and rank > 1:
        raise ValueError(f"{name} must be a scalar or a vector of vertices, got shape {tuple(value.shape)}")
    return _tensor(value, name, "int32", rank, "be a scalar or a vector of vertices")


def _storage_attrs(metric: str, scale: float, offset: float) -> dict:
    return dict(metric=_check_metric(metric), scale=float(scale), offset=float(offset))


def build_graph(vectors, max_degree: int = 32, metric: str = "l2", seed: int = 0, candidates: int | None = None,
                refine_iterations: int = 1, connect: bool = True, entry_points: int = 1, scale: float = 1.0,
                offset: float = 0.0):
    """Build a FANNG graph over the rows of ``vectors`` (float32, float16, or uint8 codes
    standing for ``offset + scale * code``).

    Returns ``(neighbours, entry, entry_points)``: an int32 [N, max_degree] tensor of
    out-edges (shortest first, -1 padded), the int32 scalar vertex nearest the mean, and
    an int32 [entry_points] vector of start vertices for :func:`search` (``entry`` first,
    then vertices near k-means centroids). ``candidates`` is the length of a vertex's
    candidate list before occlusion pruning, half approximate nearest neighbours and half
    reverse neighbours (None: max(2 * max_degree, 32)); ``refine_iterations`` the number
    of traverse-add passes; ``connect`` makes every vertex reachable from ``entry``.
    ``max_degree`` is at most 256. The result depends on ``seed`` only, not on the thread
    count.
    """
    module = load_library()
    return module.hybrid_keras_fanng_build(
        vectors=_stored_vectors(vectors),
        max_degree=_check_int(max_degree, "max_degree", 1, 256),
        seed=_check_int(seed, "seed", INT64_MIN, INT64_MAX),
        candidates=0 if candidates is None else _check_int(candidates, "candidates", 1, 4096),
        refine_iterations=_check_int(refine_iterations, "refine_iterations", 0, 1000),
        connect=bool(connect),
        num_entry_points=_check_int(entry_points, "entry_points", 1, 4096),
        **_storage_attrs(metric, scale, offset),
    )


def insert(vectors, neighbours, entry_points, start: int, metric: str = "l2", candidates: int | None = None,
           ef: int | None = None, scale: float = 1.0, offset: float = 0.0):
    """Link rows ``[start, N)`` of ``vectors`` into the graph over rows ``[0, start)``.

    ``neighbours`` is [N, M] with the existing graph in its first ``start`` rows (later
    rows are ignored); returns the updated [N, M] int32 table. New vertices are linked by
    the build's own rules (occlusion pruning of their nearest vertices, reverse edges, a
    traverse-add walk from the entry), in batches searched in parallel; the result does
    not depend on the thread count. ``candidates``: how many nearest vertices the
    occlusion rule chooses from (None: max(2 * M, 32)); ``ef``: the pool of the search
    that finds them (None: ``candidates``).
    """
    module = load_library()
    return module.hybrid_keras_fanng_insert(
        vectors=_stored_vectors(vectors),
        neighbours=_int_tensor(neighbours, "neighbours", 2),
        entry_points=_entry_tensor(entry_points, "entry_points"),
        start=_int_tensor(_check_int(start, "start", 1, INT32_MAX), "start", 0),
        candidates=0 if candidates is None else _check_int(candidates, "candidates", 1, 4096),
        ef=0 if ef is None else _check_int(ef, "ef", 1, 4096),
        **_storage_attrs(metric, scale, offset),
    )



def search(vectors, neighbours, entry, queries, k: int = 10, budget: int = 1000, ef: int = 0, metric: str = "l2",
           check_vectors: bool = True, scale: float = 1.0, offset: float = 0.0, check_neighbours: bool = True):
    """Approximate k nearest rows of ``vectors`` for each row of ``queries``.

    ``entry`` is one start vertex or a vector of them (``build_graph``'s entry points):
    every query computes its distance to each and walks from the closest. ``budget`` caps
    the distance computations per query (entry points included). With ``ef=0`` it is the
    only stopping rule, as in the paper (a budget >= N is exhaustive over everything
    reachable from the entry points); ``ef > 0`` also stops a query once no unexplored
    vertex is closer than the ``max(ef, k)`` best seen, like hnswlib's ``ef``. Returns
    ``(ids, distances)``, int32 and float32 [Q, k], nearest first, padded with -1 / +inf
    when fewer than k were found; distances are those of the dequantised vectors.
    ``check_vectors=False`` skips the per-call NaN/inf scan of all of ``vectors`` (it reads
    the whole index, which dominates calls with few queries); use it only for vectors that
    were already checked, e.g. by ``build_graph``. ``check_neighbours=False`` skips the
    per-call scan of the whole neighbour table for ids outside [-1, N): the search checks
    every id it follows anyway (a bad one fails the call the same way), so this is safe,
    but a bad id in a row no query reaches is then not reported. All other checks always run.
    """
    module = load_library()
    return module.hybrid_keras_fanng_search(
        vectors=_stored_vectors(vectors),
        neighbours=_int_tensor(neighbours, "neighbours", 2),
        entry=_entry_tensor(entry),
        queries=_float_matrix(queries, "queries"),
        k=_int_tensor(k, "k", 0),
        budget=_int_tensor(budget, "budget", 0),
        ef=_int_tensor(ef, "ef", 0),
        check_vectors=bool(check_vectors),
        check_neighbours=bool(check_neighbours),
        **_storage_attrs(metric, scale, offset),
    )
