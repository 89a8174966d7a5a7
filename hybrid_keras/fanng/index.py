"""``FanngIndex``: a FANNG graph index with hnswlib-like conventions, over the C++ ops.

The index is a few arrays (the stored vectors, the neighbour table, the entry points)
plus the caller's ids; the ops in ``hybrid_keras.fanng.ops`` build, extend and search
them. Vectors added after a build are inserted into the existing graph by the
``FanngInsert`` op (the build's own occlusion rule, batched over threads), so later
additions need no rebuild; a large addition (a quarter of the index or more) rebuilds,
which gives a better graph.

Saved files (format version 2) are a magic line, a JSON header, the SHA-256 of the
header and the arrays, then the arrays; every header field is checked against the
arrays on load. Version 1 files (header outside the checksum) still load, with the
same cross-checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from hybrid_keras.fanng import ops

METRICS = ("l2", "ip", "cosine")
STORAGES = ("float32", "float16", "uint8")
FORMAT_MAGIC = b"HKFANNG\n"
FORMAT_VERSION = 2
# Build and insertion cost grows with max_degree squared; the op refuses more.
MAX_DEGREE = 256
# The search op reads rows with 16-bit cursors: graphs made elsewhere may be this wide.
MAX_SEARCH_DEGREE = 65535
MAX_ENTRY_POINTS = 4096
# Additions of at least this fraction of the index rebuild the graph instead of inserting.
REBUILD_FRACTION = 0.25
# Builds over this many vectors report progress while the op runs, a line every
# PROGRESS_INTERVAL_S when stderr is a log file (a terminal gets a spinner).
PROGRESS_THRESHOLD = 50_000
PROGRESS_INTERVAL_S = 10.0
# Longest header line load() reads before calling the file corrupt.
MAX_HEADER_BYTES = 1 << 20


class IndexFormatError(ValueError):
    """A saved index is truncated, corrupt, or of another format version."""


class _Snapshot(NamedTuple):
    """Everything one search reads, taken together under the index's lock, so a search
    never pairs one state's graph with another's entry points or ids."""

    vectors: object  # tf.Tensor
    neighbours: object  # tf.Tensor
    entry_points: object  # tf.Tensor
    ids: np.ndarray
    scale: float
    offset: float


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("cosine metric: zero vectors have no direction")
    return (vectors / norms).astype(np.float32)


def uint8_range(vectors: np.ndarray) -> tuple[float, float]:
    """(scale, offset) for uint8 codes of ``vectors``: lossless (1, 0) when every value is an
    integer in [0, 255] (SIFT descriptors are), else the values' [min, max] in 255 steps."""
    low, high = float(vectors.min()), float(vectors.max())
    if low >= 0 and high <= 255 and np.array_equal(vectors, np.round(vectors)):
        return 1.0, 0.0
    return (high - low) / 255.0 if high > low else 1.0, low


class FanngIndex:
    """Approximate nearest neighbours on a FANNG graph (Harwood & Drummond, CVPR 2016).

    ``metric``: "l2" (distances are squared Euclidean), "ip" (distance 1 - <q, x>, as
    hnswlib) or "cosine" (vectors normalised; distance 1 - cos). ``max_degree`` caps
    out-edges per vertex (at most 256); ``candidates`` is the neighbour list each vertex
    is pruned from (default 2 x max_degree); ``refine_iterations`` the traverse-add passes
    that repair vertices greedy search fails to reach. Same seed, same data: same graph.

    ``storage``: how vectors are kept. "float32"; "float16" (half the memory, for
    embeddings; values beyond +-65504 are refused); "uint8" (a quarter, for byte data such
    as SIFT; metric "l2" only): one scale and offset for the whole index, taken from
    ``value_range=(low, high)`` when given, else from the first vectors added (lossless for
    integers in [0, 255]); later values outside the range are clipped to it. Distances are
    those of the stored (dequantised) vectors.

    ``entry_points``: how many vertices a search may start from: the vertex nearest the
    mean plus vertices near k-means centroids of the data. Each query computes its
    distance to all of them and walks from the closest, and the build's and insertion's
    traverse-add walks start there too. 1 (the default) is the paper's single entry
    vertex: on held-out-query SIFT (193k) and on clustered data (50k x 64, 200 clusters)
    64 entry points found the same recall at every ef, and their extra distances cost up
    to 10% of the speed at low ef, because the refined graph already leads a walk from
    the centre to any region within a few steps.

    ``candidates`` drives graph quality: 128 (with max_degree 32) raised held-out SIFT
    recall@10 at ef 10 from 0.66 to 0.72 (hnswlib M=16: 0.73) and speed at recall 0.99 by
    about 1.3x, for about twice the build time, under the paper's strict occlusion rule.
    The build now prunes with a slack (an edge is dropped only when a kept edge leads
    clearly closer to its target: 1.2x on squared L2 distances), which keeps more long
    edges (mean degree 15 -> 25 on SIFT, held-out recall@10 at ef 16: 0.76 -> 0.86); with it,
    96 candidates bought no speed at equal recall, so the default stays 2 x max_degree.
    """

    def __init__(self, dim: int, metric: str = "l2", max_degree: int = 32, seed: int = 0,
                 candidates: int | None = None, refine_iterations: int = 1, verbose: bool = True,
                 storage: Literal["float32", "float16", "uint8"] = "float32", entry_points: int = 1,
                 value_range: tuple[float, float] | None = None):
        self.dim = _int_argument(dim, "dim", 1, None)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if storage == "uint8" and metric != "l2":
            raise ValueError(f"storage='uint8' supports metric='l2' only, got metric={metric!r}; "
                             "use storage='float16' for inner-product or cosine indexes")
        self.metric, self.storage = metric, storage
        self.max_degree = _int_argument(max_degree, "max_degree", 1, MAX_DEGREE)
        self.seed = _int_argument(seed, "seed", ops.INT64_MIN, ops.INT64_MAX)
        self.candidates = None if candidates is None else _int_argument(candidates, "candidates", 1, 4096)
        self.refine_iterations = _int_argument(refine_iterations, "refine_iterations", 0, 1000)
        self.num_entry_points = _int_argument(entry_points, "entry_points", 1, MAX_ENTRY_POINTS)
        self.verbose = verbose
        self.scale, self.offset = 1.0, 0.0  # uint8: value = offset + scale * code
        self._range_fixed = False
        if value_range is not None:
            if storage != "uint8":
                raise ValueError(f"value_range applies to storage='uint8' only, got storage={storage!r}")
            low, high = (float(v) for v in value_range)
            if not (math.isfinite(low) and math.isfinite(high) and high > low):
                raise ValueError(f"value_range must be two finite numbers (low, high) with low < high, got {value_range}")
            self.scale, self.offset, self._range_fixed = (high - low) / 255.0, low, True
        self.vectors = np.zeros((0, self.dim), storage)  # as stored (normalised for cosine, then encoded)
        self.ids = np.zeros(0, np.int64)
        self.neighbours = np.zeros((0, self.max_degree), np.int32)
        self.entry = 0
        self.entry_points = np.zeros(1, np.int32)
        self._built_rows = 0  # rows covered by the graph; later rows are pending
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ properties
    @property
    def op_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def is_built(self) -> bool:
        return self._built_rows == len(self.vectors) and len(self.vectors) > 0

    @property
    def memory_bytes(self) -> int:
        """Bytes of the arrays a search reads (vectors, neighbour table, ids, entry points)."""
        return sum(a.nbytes for a in (self.vectors, self.neighbours, self.ids, self.entry_points))

    def __repr__(self) -> str:
        return (f"FanngIndex(dim={self.dim}, metric={self.metric!r}, storage={self.storage!r}, "
                f"max_degree={self.max_degree}, size={len(self)}, built={self.is_built})")

    def decoded_vectors(self) -> np.ndarray:
        """The stored vectors as float32 (dequantised; normalised for cosine)."""
        if self.storage == "uint8":
            return (self.offset + self.scale * self.vectors.astype(np.float32)).astype(np.float32)
        return self.vectors.astype(np.float32)

    # ------------------------------------------------------------------ building
    def _checked(self, vectors, name: str) -> np.ndarray:
        """``vectors`` as a float32 [rows, dim] array (normalised for cosine)."""
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"{name} must be [rows, {self.dim}], got shape {array.shape}")
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contain NaN or infinite values (or values beyond float32)")
        return _normalise(array) if self.metric == "cosine" else array

    def _encode(self, vectors: np.ndarray) -> np.ndarray:
        """float32 rows in the storage type (fixing the uint8 range on first use)."""
        if self.storage == "float32":
            return vectors
        if self.storage == "float16":
            with np.errstate(over="ignore"):
                halves = vectors.astype(np.float16)
            if not np.all(np.isfinite(halves)):
                raise ValueError("vectors exceed the float16 range (|x| <= 65504): use storage='float32'")
            return halves
        if not self._range_fixed:
            self.scale, self.offset = uint8_range(vectors)
            self._range_fixed = True
        return np.clip(np.rint((vectors - self.offset) / self.scale), 0, 255).astype(np.uint8)

    def add(self, vectors, ids=None) -> None:
        """Add vectors with integer ``ids`` (default: their insertion positions).

        Before the first search (or :meth:`build`) additions just accumulate; after
        it they are inserted into the graph, or the graph is rebuilt when the
        addition is large. Adding zero rows does nothing.
        """
        vectors = self._checked(vectors, "vectors")
        if ids is None:
            ids = np.arange(len(self.vectors), len(self.vectors) + len(vectors), dtype=np.int64)
        ids = np.asarray(ids).reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise ValueError("ids must fit int64")
        ids = ids.astype(np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(vectors) == 0:
            return
        with self._lock:
            self._snapshot = None
            self.vectors = np.concatenate([self.vectors, self._encode(vectors)])
            self.ids = np.concatenate([self.ids, ids])
            self.neighbours = np.concatenate([self.neighbours, np.full((len(vectors), self.max_degree), -1, np.int32)])
            if self._built_rows:
                if len(vectors) >= REBUILD_FRACTION * self._built_rows:
                    self._build_locked()
                else:
                    self._insert_pending()

    def build(self) -> "FanngIndex":
        """(Re)build the graph over every vector added so far."""
        with self._lock:
            self._build_locked()
        return self

    def _build_locked(self) -> None:
        if len(self.vectors) == 0:
            raise ValueError("the index is empty: add vectors before building")
        started = time.perf_counter()
        show = self.verbose and len(self.vectors) >= PROGRESS_THRESHOLD
        done = threading.Event()
        if show:
            threading.Thread(target=_report_progress, args=(len(self.vectors), done), daemon=True).start()
        try:
            neighbours, entry, entry_points = ops.build_graph(
                self.vectors, max_degree=self.max_degree, metric=self.op_metric, seed=self.seed,
                candidates=self.candidates, refine_iterations=self.refine_iterations,
                entry_points=min(self.num_entry_points, len(self.vectors)), scale=self.scale, offset=self.offset)
        finally:
            done.set()
        self.neighbours, self.entry = neighbours.numpy(), int(entry.numpy())
        self.entry_points = entry_points.numpy()
        self._built_rows = len(self.vectors)
        self._snapshot = None
        if show:
            print(f"{_line_start()}[fanng] built a graph over {len(self.vectors):,} vectors in "
                  f"{time.perf_counter() - started:.1f} s" + (" " * 20 if _is_terminal() else ""),
                  file=sys.stderr, flush=True)

    def _insert_pending(self) -> None:
        """Link the rows added since the last build into the existing graph (FanngInsert op)."""
        if self._built_rows == len(self.vectors):
            return
        if self.max_degree > MAX_DEGREE:
            raise ValueError(f"this graph has {self.max_degree} edges per vertex; insertion supports at most "
                             f"{MAX_DEGREE}: rebuild it with build() (max_degree is then capped)")
        self.neighbours = ops.insert(self.vectors, self.neighbours, self.entry_points, self._built_rows,
                                     metric=self.op_metric, candidates=self.candidates, scale=self.scale,
                                     offset=self.offset).numpy()
        self._built_rows = len(self.vectors)
        self._snapshot = None

    # ------------------------------------------------------------------ searching
    def search(self, queries, k: int = 10, ef: int | None = None, budget: int | None = None):
        """The ``k`` nearest stored vectors of each query: ``(ids [Q, k] int64, distances [Q, k])``.

        Two knobs trade speed for recall. ``ef`` (as in hnswlib): a query stops once no
        unexplored vertex is closer than the ``max(ef, k)`` best it has seen, so easy
        queries finish early; more ef, higher recall. ``budget``: a cap on the distance
        computations per query (the distances to the entry points count). Given a budget
        and no ef, the budget is the only rule, as in the paper (every query computes
        ``budget`` distances, and a budget of ``len(index)`` searches everything
        reachable, i.e. exactly). Neither given: ef ``max(64, k)``, no cap. Distances
        follow the metric (see the class docstring). Safe to call from several threads,
        also while another thread adds vectors.
        """
        queries = self._checked(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= max(len(self), 1):
            raise ValueError(f"k must be an integer in [1, {len(self)}] (the index size), got {k!r}")
        int32_max = int(np.iinfo(np.int32).max)
        if ef is None:
            ef = 0 if budget is not None else max(64, int(k))
        else:
            ef = _int_argument(ef, "ef", 1, None)
        budget = int32_max if budget is None else _int_argument(budget, "budget", 1, None)
        with self._lock:
            if not self.is_built:
                if self._built_rows == 0:
                    self._build_locked()
                else:
                    self._insert_pending()
            snapshot = self._snapshot_locked()
        # The stored vectors were checked for NaN/inf when added, and the neighbour table
        # comes from the build/insert ops or a checked load; rescanning either on every call
        # would cost more than a small batch of queries (the search still bounds-checks
        # every id it follows).
        rows, distances = ops.search(snapshot.vectors, snapshot.neighbours, snapshot.entry_points, queries, k=int(k),
                                     budget=min(budget, int32_max), ef=min(int(ef), int32_max), metric=self.op_metric,
                                     check_vectors=False, check_neighbours=False, scale=snapshot.scale,
                                     offset=snapshot.offset)
        rows, distances = rows.numpy(), distances.numpy()
        ids = np.where(rows >= 0, snapshot.ids[np.maximum(rows, 0)], -1)
        if self.metric != "l2":  # the op's -<q, x> becomes hnswlib's 1 - <q, x>
            distances = 1.0 + distances
        return ids, distances

    def _snapshot_locked(self) -> _Snapshot:
        if self._snapshot is None:
            import tensorflow as tf

            self._snapshot = _Snapshot(tf.constant(self.vectors), tf.constant(self.neighbours),
                                       tf.constant(self.entry_points), self.ids, self.scale, self.offset)
        return self._snapshot

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the index to one file (format version 2): magic line, JSON header, the
        SHA-256 of header line and arrays, then the arrays. Written atomically."""
        if not self.is_built:
            self.build()
        with self._lock:
            arrays = (self.vectors, self.neighbours, self.ids, self.entry_points)
            payload = b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
                               for a in arrays)
            header = {
                "format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric, "storage": self.storage,
                "scale": float(self.scale), "offset": float(self.offset), "max_degree": self.max_degree,
                "seed": self.seed, "candidates": self.candidates, "refine_iterations": self.refine_iterations,
                "size": len(self), "entry": self.entry, "entry_points": len(self.entry_points),
                "payload_bytes": len(payload),
            }
        header_line = json.dumps(header, sort_keys=True).encode() + b"\n"
        digest = hashlib.sha256(header_line + payload).hexdigest().encode() + b"\n"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as f:
            f.write(FORMAT_MAGIC + header_line + digest + payload)
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path, verbose: bool = True) -> "FanngIndex":
        """Read an index written by :meth:`save` (format 2, or format 1 of earlier releases).

        Anything wrong with the file, a flipped bit in the header or the arrays, a
        missing or mistyped field, a field that disagrees with the arrays, raises
        :class:`IndexFormatError` naming the problem.
        """
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(len(FORMAT_MAGIC)) != FORMAT_MAGIC:
                raise IndexFormatError(f"{path} is not a FANNG index file (bad magic)")
            header_line = f.readline(MAX_HEADER_BYTES)
            header = _parse_header(path, header_line)
            version = header.get("format_version")
            if version == 1:
                payload = f.read()
            elif version == FORMAT_VERSION:
                digest = f.readline(80)
                payload = f.read()
            else:
                raise IndexFormatError(f"{path} has format version {version!r}; this version of hybrid-keras reads "
                                       f"versions 1 and {FORMAT_VERSION}")
        if version == 1:
            return _load_version_1(path, header, payload, verbose)
        if hashlib.sha256(header_line + payload).hexdigest().encode() + b"\n" != digest:
            if len(payload) < _field(path, header, "payload_bytes", int, low=0):
                raise IndexFormatError(f"{path} is truncated: {len(payload)} of {header['payload_bytes']} "
                                       "payload bytes")
            raise IndexFormatError(f"{path} is corrupt: its checksum does not match the header and arrays")
        layout = _Layout.from_header(path, header)
        if len(payload) != layout.payload_bytes:
            raise IndexFormatError(f"{path}: the header describes {layout.payload_bytes} payload bytes, "
                                   f"the file holds {len(payload)}")
        return layout.index(cls, path, payload, verbose)

    @classmethod
    def from_graph(cls, vectors, neighbours, entry: int, ids=None, entry_points=None, scale: float = 1.0,
                   offset: float = 0.0, **options) -> "FanngIndex":
        """An index over a graph built earlier (``vectors`` as stored, ``neighbours``, ``entry``),
        e.g. arrays kept elsewhere such as a KNNClassifier's weights; later :meth:`add` calls
        insert into it. ``vectors`` of dtype float16 or uint8 (codes for ``offset + scale *
        code``) keep that storage; others are float32. ``entry_points`` defaults to
        ``[entry]``. ``options`` are the constructor's (metric, seed, ...)."""
        vectors = np.asarray(vectors)
        storage = vectors.dtype.name if vectors.dtype.name in ("float16", "uint8") else "float32"
        if options.pop("storage", storage) != storage:
            raise ValueError(f"vectors of dtype {vectors.dtype} are stored as {storage!r}; got a different storage")
        vectors = vectors.astype(storage, copy=False)
        neighbours = np.asarray(neighbours)
        if neighbours.dtype.kind not in "iu":
            raise TypeError(f"neighbours must hold integers, got dtype {neighbours.dtype}")
        neighbours = neighbours.astype(np.int32)
        size = len(vectors)
        if vectors.ndim != 2 or neighbours.ndim != 2 or len(neighbours) != size or size == 0:
            raise ValueError(f"vectors [N, D] and neighbours [N, M] with N >= 1 expected, got shapes "
                             f"{vectors.shape} and {neighbours.shape}")
        degree = neighbours.shape[1]
        if not 1 <= degree <= MAX_SEARCH_DEGREE:
            raise ValueError(f"neighbours must have between 1 and {MAX_SEARCH_DEGREE} columns, got {degree}")
        entry_points = np.asarray([entry] if entry_points is None else entry_points).reshape(-1)
        if entry_points.dtype.kind not in "iu" or not 1 <= len(entry_points) <= MAX_ENTRY_POINTS:
            raise ValueError(f"entry_points must be 1 to {MAX_ENTRY_POINTS} integer vertices, got {entry_points!r}")
        if neighbours.min() < -1 or neighbours.max() >= size or not 0 <= int(entry) < size:
            raise ValueError("neighbour ids must be in [-1, N) and the entry in [0, N)")
        if entry_points.min() < 0 or entry_points.max() >= size:
            raise ValueError(f"entry_points must be vertices in [0, {size}), got values from {entry_points.min()} "
                             f"to {entry_points.max()}")
        if vectors.dtype.kind == "f" and not np.all(np.isfinite(vectors)):
            raise ValueError("vectors contain NaN or infinite values")
        index = cls(vectors.shape[1], max_degree=min(degree, MAX_DEGREE), storage=storage,
                    entry_points=len(entry_points), **options)
        if storage == "uint8":
            if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
                raise ValueError(f"scale must be positive and finite and offset finite, got {scale}, {offset}")
            index.scale, index.offset, index._range_fixed = float(scale), float(offset), True
        index.max_degree = degree  # a graph made elsewhere may be wider than builds allow
        index.vectors, index.neighbours, index.entry = vectors, neighbours, int(entry)
        index.entry_points = entry_points.astype(np.int32)
        index.ids = np.arange(size, dtype=np.int64) if ids is None else np.asarray(ids, np.int64).reshape(size)
        index._built_rows = size
        return index


# ---------------------------------------------------------------------- file format helpers
def _int_argument(value, name: str, low: int | None, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {'in ' if high is not None else ''}{bounds}, got {value}")
    return int(value)


def _parse_header(path: Path, line: bytes) -> dict:
    if not line.endswith(b"\n"):
        raise IndexFormatError(f"{path}: the header is corrupt (no end of line within {MAX_HEADER_BYTES} bytes)")
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise IndexFormatError(f"{path}: the header is corrupt (not JSON)") from None
    if not isinstance(header, dict):
        raise IndexFormatError(f"{path}: the header is corrupt (not a JSON object)")
    return header


_MISSING = object()


def _field(path: Path, header: dict, name: str, kind, low=None, high=None, choices=None, optional=False):
    """header[name], checked: present, of type ``kind`` (int excludes bool; float accepts
    int), within [low, high] or among ``choices``. Anything else is an IndexFormatError."""
    value = header.get(name, _MISSING)
    if value is _MISSING:
        raise IndexFormatError(f"{path}: the header lacks the field {name!r}")
    if value is None and optional:
        return None
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise IndexFormatError(f"{path}: the header field {name!r} must be {kind.__name__}"
                               f"{' or null' if optional else ''}, got {value!r}")
    if choices is not None and value not in choices:
        raise IndexFormatError(f"{path}: the header field {name!r} must be one of {choices}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise IndexFormatError(f"{path}: the header field {name!r} is out of range: {value!r}")
    return value


class _Layout(NamedTuple):
    """The arrays a header describes, each field checked on the way in."""

    size: int
    dim: int
    degree: int
    storage: str
    entry_count: int
    options: dict

    @classmethod
    def from_header(cls, path: Path, header: dict, version: int = FORMAT_VERSION) -> "_Layout":
        size = _field(path, header, "size", int, low=1, high=ops.INT32_MAX - 1)
        dim = _field(path, header, "dim", int, low=1, high=1 << 24)
        degree = _field(path, header, "max_degree", int, low=1, high=MAX_SEARCH_DEGREE)
        metric = _field(path, header, "metric", str, choices=METRICS)
        options = dict(metric=metric,
                       seed=_field(path, header, "seed", int, low=ops.INT64_MIN, high=ops.INT64_MAX),
                       candidates=_field(path, header, "candidates", int, low=1, high=4096, optional=True),
                       refine_iterations=_field(path, header, "refine_iterations", int, low=0, high=1000),
                       entry=_field(path, header, "entry", int, low=0, high=size - 1))
        if version == 1:
            return cls(size, dim, degree, "float32", 0, options)
        storage = _field(path, header, "storage", str, choices=STORAGES)
        options["scale"] = _field(path, header, "scale", float)
        options["offset"] = _field(path, header, "offset", float)
        if storage == "uint8" and (metric != "l2" or options["scale"] <= 0):
            raise IndexFormatError(f"{path}: uint8 storage needs metric 'l2' and a positive scale, got "
                                   f"{metric!r} and {options['scale']}")
        if storage != "uint8" and (options["scale"], options["offset"]) != (1.0, 0.0):
            raise IndexFormatError(f"{path}: scale and offset apply to uint8 storage only and must be 1 and 0 for "
                                   f"{storage}, got {options['scale']} and {options['offset']}")
        entry_count = _field(path, header, "entry_points", int, low=1, high=MAX_ENTRY_POINTS)
        layout = cls(size, dim, degree, storage, entry_count, options)
        if _field(path, header, "payload_bytes", int, low=0) != layout.payload_bytes:
            raise IndexFormatError(f"{path}: the header's size, dim, max_degree, storage and entry_points describe "
                                   f"{layout.payload_bytes} payload bytes, its payload_bytes says "
                                   f"{header['payload_bytes']}")
        return layout

    @property
    def vector_bytes(self) -> int:
        return self.size * self.dim * np.dtype(self.storage).itemsize

    @property
    def payload_bytes(self) -> int:
        return self.vector_bytes + self.size * self.degree * 4 + self.size * 8 + self.entry_count * 4

    def index(self, cls, path: Path, payload: bytes, verbose: bool) -> FanngIndex:
        """The index over ``payload`` (whose length was checked), after checking the arrays
        against the header: ids in range, entry points valid, vectors finite (and unit
        length for cosine)."""
        offset = 0

        def take(dtype, count):
            nonlocal offset
            array = np.frombuffer(payload, np.dtype(dtype).newbyteorder("<"), count, offset)
            offset += array.nbytes
            return array.astype(dtype)

        vectors = take(self.storage, self.size * self.dim).reshape(self.size, self.dim)
        neighbours = take(np.int32, self.size * self.degree).reshape(self.size, self.degree)
        ids = take(np.int64, self.size)
        entry = self.options["entry"]
        entry_points = take(np.int32, self.entry_count) if self.entry_count else np.array([entry], np.int32)
        if neighbours.min() < -1 or neighbours.max() >= self.size:
            raise IndexFormatError(f"{path}: neighbour ids outside [-1, {self.size}): the header's size or "
                                   "max_degree does not match the arrays")
        if entry_points.min() < 0 or entry_points.max() >= self.size or entry_points[0] != entry:
            raise IndexFormatError(f"{path}: the entry points disagree with the header's entry and size")
        if vectors.dtype.kind == "f":
            if not np.all(np.isfinite(vectors)):
                raise IndexFormatError(f"{path}: the vectors contain NaN or infinite values")
            if self.options["metric"] == "cosine":
                norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
                tolerance = 1e-2 if self.storage == "float16" else 1e-4
                if np.any(np.abs(norms - 1) > tolerance):
                    raise IndexFormatError(f"{path}: the header says metric 'cosine' but the vectors are not unit length")
        options = dict(self.options)
        del options["entry"]
        scale, offset_value = options.pop("scale", 1.0), options.pop("offset", 0.0)
        try:
            return cls.from_graph(vectors, neighbours, entry, ids=ids, entry_points=entry_points, scale=scale,
                                  offset=offset_value, verbose=verbose, **options)
        except (ValueError, TypeError) as error:
            raise IndexFormatError(f"{path}: the arrays are inconsistent ({error})") from None


def _load_version_1(path: Path, header: dict, payload: bytes, verbose: bool) -> FanngIndex:
    """Format 1 (no storage types, one entry vertex, SHA-256 over the arrays only): its
    header is not covered by the checksum, so every field is cross-checked against the
    arrays; metric l2 against ip cannot be told from the arrays and is taken as written."""
    payload_bytes = _field(path, header, "payload_bytes", int, low=0)
    if len(payload) < payload_bytes:
        raise IndexFormatError(f"{path} is truncated: {len(payload)} of {payload_bytes} payload bytes")
    if hashlib.sha256(payload).hexdigest() != _field(path, header, "sha256", str):
        raise IndexFormatError(f"{path} is corrupt: its checksum does not match")
    layout = _Layout.from_header(path, header, version=1)
    if layout.payload_bytes != payload_bytes or len(payload) != payload_bytes:
        raise IndexFormatError(f"{path}: the header's size, dim and max_degree describe {layout.payload_bytes} "
                               f"payload bytes, the file holds {len(payload)} (payload_bytes says {payload_bytes})")
    return layout.index(FanngIndex, path, payload, verbose)


# ---------------------------------------------------------------------- progress
def _is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _line_start() -> str:
    # Overwrite the spinner's line on a terminal; a log file gets plain lines.
    return "\r" if _is_terminal() else ""


def _report_progress(size: int, done: threading.Event) -> None:
    """Elapsed time while the build op runs (the op is one call; it cannot report fractions).
    A terminal gets a spinner redrawn in place twice a second; a log file a line every
    PROGRESS_INTERVAL_S."""
    started = time.perf_counter()
    terminal = _is_terminal()
    interval = 0.5 if terminal else PROGRESS_INTERVAL_S
    spinner = "|/-\\"
    tick = 0
    while not done.wait(interval):
        elapsed = time.perf_counter() - started
        if terminal:
            print(f"\r[fanng] building a graph over {size:,} vectors {spinner[tick % 4]} {elapsed:.0f} s", end="",
                  file=sys.stderr, flush=True)
        else:
            print(f"[fanng] building a graph over {size:,} vectors: {elapsed:.0f} s", file=sys.stderr, flush=True)
        tick += 1
