"""``FanngIndex``: a FANNG graph index with hnswlib-like conventions, over the C++ ops.

The index is three arrays (vectors, the neighbour table, an entry vertex) plus the
caller's ids; the ops in ``hybrid_keras.fanng.ops`` build and search them. Vectors
added after a build are inserted into the existing graph (searched for, pruned with
the occlusion rule, linked both ways), so small later additions need no rebuild; a
large addition (a quarter of the index or more) rebuilds, which gives a better graph.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from hybrid_keras.fanng import ops

METRICS = ("l2", "ip", "cosine")
FORMAT_MAGIC = b"HKFANNG\n"
FORMAT_VERSION = 1
# Additions of at least this fraction of the index rebuild the graph instead of inserting.
REBUILD_FRACTION = 0.25
# Builds over this many vectors report progress while the op runs.
PROGRESS_THRESHOLD = 50_000


class IndexFormatError(ValueError):
    """A saved index is truncated, corrupt, or of another format version."""


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("cosine metric: zero vectors have no direction")
    return (vectors / norms).astype(np.float32)


class FanngIndex:
    """Approximate nearest neighbours on a FANNG graph (Harwood & Drummond, CVPR 2016).

    ``metric``: "l2" (distances are squared Euclidean), "ip" (distance 1 - <q, x>, as
    hnswlib) or "cosine" (vectors normalised; distance 1 - cos). ``max_degree`` caps
    out-edges per vertex; ``candidates`` is the neighbour list each vertex is pruned
    from (default 2 x max_degree); ``refine_iterations`` the traverse-add passes that
    repair vertices greedy search fails to reach. Same seed, same data: same graph.
    """

    def __init__(self, dim: int, metric: str = "l2", max_degree: int = 32, seed: int = 0,
                 candidates: int | None = None, refine_iterations: int = 1, verbose: bool = True):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if int(max_degree) < 1:
            raise ValueError(f"max_degree must be >= 1, got {max_degree}")
        self.dim, self.metric, self.max_degree, self.seed = int(dim), metric, int(max_degree), int(seed)
        self.candidates, self.refine_iterations, self.verbose = candidates, int(refine_iterations), verbose
        self.vectors = np.zeros((0, self.dim), np.float32)  # as stored (normalised for cosine)
        self.ids = np.zeros(0, np.int64)
        self.neighbours = np.zeros((0, self.max_degree), np.int32)
        self.entry = 0
        self._built_rows = 0  # rows covered by the graph; later rows are pending
        self._tensors = None  # (vectors, neighbours) as TF tensors, so searches do not copy the index
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

    def __repr__(self) -> str:
        return (f"FanngIndex(dim={self.dim}, metric={self.metric!r}, max_degree={self.max_degree}, "
                f"size={len(self)}, built={self.is_built})")

    # ------------------------------------------------------------------ building
    def _checked(self, vectors, name: str) -> np.ndarray:
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"{name} must be [rows, {self.dim}], got shape {array.shape}")
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contain NaN or infinite values")
        return _normalise(array) if self.metric == "cosine" else array

    def add(self, vectors, ids=None) -> None:
        """Add vectors with integer ``ids`` (default: their insertion positions).

        Before the first search (or :meth:`build`) additions just accumulate; after
        it they are inserted into the graph, or the graph is rebuilt when the
        addition is large.
        """
        vectors = self._checked(vectors, "vectors")
        if ids is None:
            ids = np.arange(len(self.vectors), len(self.vectors) + len(vectors), dtype=np.int64)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        with self._lock:
            self._tensors = None
            self.vectors = np.concatenate([self.vectors, vectors])
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
            neighbours, entry = ops.build_graph(self.vectors, max_degree=self.max_degree, metric=self.op_metric,
                                                seed=self.seed, candidates=self.candidates,
                                                refine_iterations=self.refine_iterations)
        finally:
            done.set()
        self.neighbours, self.entry = neighbours.numpy(), int(entry.numpy())
        self._built_rows = len(self.vectors)
        self._tensors = None
        if show:
            print(f"\r[fanng] built a graph over {len(self.vectors):,} vectors in "
                  f"{time.perf_counter() - started:.1f} s" + " " * 20, file=sys.stderr, flush=True)

    def _distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise distances in the op's convention (squared L2 or negative dot)."""
        if self.op_metric == "l2":
            return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0)
        return -(a @ b.T)

    def _prune(self, vertex: int, candidates: np.ndarray) -> np.ndarray:
        """The occlusion rule: walk candidates nearest first; drop r when a kept q has
        d(p, q) < d(p, r) and d(q, r) < d(p, r)."""
        candidates = np.unique(candidates[(candidates >= 0) & (candidates != vertex)])
        if len(candidates) == 0:
            return candidates.astype(np.int32)
        to_vertex = self._distances(self.vectors[vertex][None], self.vectors[candidates])[0]
        order = np.argsort(to_vertex, kind="stable")
        candidates, to_vertex = candidates[order], to_vertex[order]
        between = self._distances(self.vectors[candidates], self.vectors[candidates])
        kept: list[int] = []
        for i in range(len(candidates)):
            if not any(to_vertex[j] < to_vertex[i] and between[j, i] < to_vertex[i] for j in kept):
                kept.append(i)
                if len(kept) == self.max_degree:
                    break
        return candidates[kept].astype(np.int32)

    def _set_edges(self, vertex: int, edges: np.ndarray) -> None:
        self.neighbours[vertex] = -1
        self.neighbours[vertex, : len(edges)] = edges

    def _insert_pending(self) -> None:
        """Insert the rows added since the last build into the existing graph."""
        start, end = self._built_rows, len(self.vectors)
        pool = 2 * self.max_degree if self.candidates is None else int(self.candidates)
        for vertex in range(start, end):
            graph_rows = vertex  # rows already linked: the built graph plus earlier insertions
            k = min(pool, graph_rows)
            ids, _ = ops.search(self.vectors[:graph_rows], self.neighbours[:graph_rows], self.entry,
                                self.vectors[vertex][None], k=k, budget=max(16 * k, 256), metric=self.op_metric,
                                check_vectors=False)
            edges = self._prune(vertex, ids.numpy()[0])
            self._set_edges(vertex, edges)
            for neighbour in edges:  # reverse edges, re-pruned so the neighbour's list stays sparse
                current = self.neighbours[neighbour]
                self._set_edges(neighbour, self._prune(int(neighbour), np.append(current[current >= 0], vertex)))
        self._built_rows = end
        self._tensors = None

    # ------------------------------------------------------------------ searching
    def search(self, queries, k: int = 10, ef: int | None = None, budget: int | None = None):
        """The ``k`` nearest stored vectors of each query: ``(ids [Q, k] int64, distances [Q, k])``.

        Two knobs trade speed for recall. ``ef`` (as in hnswlib): a query stops once no
        unexplored vertex is closer than the ``max(ef, k)`` best it has seen, so easy
        queries finish early; more ef, higher recall. ``budget``: a cap on the distance
        computations per query. Given a budget and no ef, the budget is the only rule,
        as in the paper (every query computes ``budget`` distances, and a budget of
        ``len(index)`` searches everything reachable, i.e. exactly). Neither given: ef
        ``max(64, k)``, no cap. Distances follow the metric (see the class docstring).
        """
        queries = self._checked(queries, "queries")
        if not 1 <= int(k) <= max(len(self), 1):
            raise ValueError(f"k must be in [1, {len(self)}] (the index size), got {k}")
        if ef is None:
            ef = 0 if budget is not None else max(64, int(k))
        elif int(ef) < 1:
            raise ValueError(f"ef must be >= 1, got {ef}")
        int32_max = int(np.iinfo(np.int32).max)
        budget = int32_max if budget is None else int(budget)
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        if not self.is_built:
            with self._lock:
                if self._built_rows == 0:
                    self._build_locked()
                elif not self.is_built:
                    self._insert_pending()
        with self._lock:
            if self._tensors is None:
                import tensorflow as tf

                self._tensors = (tf.constant(self.vectors), tf.constant(self.neighbours))
            vectors, neighbours = self._tensors
        # The stored vectors were checked for NaN/inf when added; rescanning the whole
        # index on every call would cost more than a small batch of queries.
        rows, distances = ops.search(vectors, neighbours, self.entry, queries, k=int(k),
                                     budget=min(budget, int32_max), ef=min(int(ef), int32_max), metric=self.op_metric,
                                     check_vectors=False)
        rows, distances = rows.numpy(), distances.numpy()
        ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
        if self.metric != "l2":  # the op's -<q, x> becomes hnswlib's 1 - <q, x>
            distances = 1.0 + distances
        return ids, distances

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the index to one file: a JSON header (with a SHA-256 of the arrays) and the arrays."""
        if not self.is_built:
            self.build()
        payload = io.BytesIO()
        for array in (self.vectors, self.neighbours, self.ids):
            payload.write(np.ascontiguousarray(array).tobytes())
        payload = payload.getvalue()
        header = {
            "format_version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric, "max_degree": self.max_degree,
            "seed": self.seed, "candidates": self.candidates, "refine_iterations": self.refine_iterations,
            "size": len(self), "entry": self.entry, "payload_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as f:
            f.write(FORMAT_MAGIC)
            f.write(json.dumps(header).encode() + b"\n")
            f.write(payload)
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path, verbose: bool = True) -> "FanngIndex":
        """Read an index written by :meth:`save`; truncated or altered files raise IndexFormatError."""
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(len(FORMAT_MAGIC)) != FORMAT_MAGIC:
                raise IndexFormatError(f"{path} is not a FANNG index file (bad magic)")
            try:
                header = json.loads(f.readline())
            except ValueError:
                raise IndexFormatError(f"{path}: the header is corrupt") from None
            payload = f.read()
        if header.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{path} has format version {header.get('format_version')}; "
                                   f"this version of hybrid-keras reads version {FORMAT_VERSION}")
        if len(payload) != header["payload_bytes"]:
            raise IndexFormatError(f"{path} is truncated: {len(payload)} of {header['payload_bytes']} payload bytes")
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise IndexFormatError(f"{path} is corrupt: its checksum does not match")
        size, dim, degree = header["size"], header["dim"], header["max_degree"]
        vector_bytes, neighbour_bytes = size * dim * 4, size * degree * 4
        try:
            return cls.from_graph(
                np.frombuffer(payload, np.float32, size * dim).reshape(size, dim).copy(),
                np.frombuffer(payload, np.int32, size * degree, vector_bytes).reshape(size, degree).copy(),
                int(header["entry"]), ids=np.frombuffer(payload, np.int64, size, vector_bytes + neighbour_bytes).copy(),
                metric=header["metric"], seed=header["seed"], candidates=header["candidates"],
                refine_iterations=header["refine_iterations"], verbose=verbose)
        except ValueError as error:
            raise IndexFormatError(f"{path}: the arrays are inconsistent ({error})") from None

    @classmethod
    def from_graph(cls, vectors, neighbours, entry: int, ids=None, **options) -> "FanngIndex":
        """An index over a graph built earlier (``vectors`` as stored, ``neighbours``, ``entry``),
        e.g. arrays kept elsewhere such as a KNNClassifier's weights; later :meth:`add` calls
        insert into it. ``options`` are the constructor's (metric, seed, ...)."""
        vectors = np.asarray(vectors, np.float32)
        neighbours = np.asarray(neighbours, np.int32)
        size = len(vectors)
        if vectors.ndim != 2 or neighbours.ndim != 2 or len(neighbours) != size or size == 0:
            raise ValueError(f"vectors [N, D] and neighbours [N, M] with N >= 1 expected, got shapes "
                             f"{vectors.shape} and {neighbours.shape}")
        if neighbours.min() < -1 or neighbours.max() >= size or not 0 <= int(entry) < size:
            raise ValueError("neighbour ids must be in [-1, N) and the entry in [0, N)")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("vectors contain NaN or infinite values")
        index = cls(vectors.shape[1], max_degree=neighbours.shape[1], **options)
        index.vectors, index.neighbours, index.entry = vectors, neighbours, int(entry)
        index.ids = np.arange(size, dtype=np.int64) if ids is None else np.asarray(ids, np.int64).reshape(size)
        index._built_rows = size
        return index


def _report_progress(size: int, done: threading.Event) -> None:
    """Elapsed time while the build op runs (the op is one call; it cannot report fractions)."""
    started = time.perf_counter()
    spinner = "|/-\\"
    tick = 0
    while not done.wait(0.5):
        print(f"\r[fanng] building a graph over {size:,} vectors {spinner[tick % 4]} "
              f"{time.perf_counter() - started:.0f} s", end="", file=sys.stderr, flush=True)
        tick += 1
