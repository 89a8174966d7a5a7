"""The indexes the ANN benchmark compares, behind one small interface.

Each method builds once over a base (``build``, timed by the caller, single-threaded),
then answers ``search(queries, setting, threads)`` for every setting of its speed/recall
knob, cheapest first. ``threads=1`` runs in the calling thread; ``threads=2`` uses the
library's own multi-threaded batch search, or for FANNG (whose op runs in the caller's
thread when TensorFlow's intra-op pool has one thread) two threads that each search half
the queries, as two concurrent callers would. ``index_bytes`` is the size of the saved
index: what has to be kept in memory to serve it.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

K = 10
EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
FANNG_BUDGETS = (40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 5120, 10240)
EF_CONSTRUCTION = 200


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _faiss_search(index, queries, threads: int) -> np.ndarray:
    """The k nearest ids with faiss on ``threads`` OpenMP threads, back to one thread afterwards."""
    import faiss

    faiss.omp_set_num_threads(threads)
    try:
        return index.search(queries, K)[1]
    finally:
        faiss.omp_set_num_threads(1)


class Method:
    """One index and its knob. Subclasses set ``name``, ``family`` and ``settings``."""

    name: str
    family: str  # "FANNG", "hnswlib", "faiss HNSW", "ScaNN" or "exact"
    settings: list[dict]
    options: dict = {}  # construction options worth recording

    def build(self, base: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, setting: dict, threads: int) -> np.ndarray:
        """Ids [Q, K] (int64) of each query's approximate K nearest base rows."""
        raise NotImplementedError

    def index_bytes(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "options": dict(self.options)}


# ---------------------------------------------------------------------- FANNG
class Fanng(Method):
    """``hybrid_keras.fanng.FanngIndex``; ``index_options`` go to its constructor
    (storage type, entry points, ...), ``search_options`` to every search."""

    family = "FANNG"

    def __init__(self, name: str, max_degree: int = 32, index_options: dict | None = None,
                 search_options: dict | None = None, rule: str = "ef"):
        if rule not in ("ef", "budget"):
            raise ValueError(f"rule must be 'ef' or 'budget'. Received: {rule!r}")
        self.name, self.max_degree, self.rule = name, max_degree, rule
        self.index_options, self.search_options = dict(index_options or {}), dict(search_options or {})
        self.options = {"max_degree": max_degree, "rule": rule, **self.index_options, **self.search_options}
        self.settings = [{rule: value} for value in (EFS if rule == "ef" else FANNG_BUDGETS)]
        self.index = None
        self._pool = ThreadPoolExecutor(2)

    def build(self, base):
        from hybrid_keras.fanng import FanngIndex

        self.index = FanngIndex(base.shape[1], max_degree=self.max_degree, seed=0, verbose=False, **self.index_options)
        self.index.add(base)
        self.index.build()

    def share_graph(self, other: "Fanng") -> None:
        """Search ``other``'s built index (another stopping rule or search option over one graph)."""
        self.index = other.index

    def _search(self, queries, setting):
        return self.index.search(queries, k=K, **setting, **self.search_options)[0]

    def search(self, queries, setting, threads):
        if threads == 1:
            return self._search(queries, setting)
        halves = np.array_split(queries, threads)
        return np.concatenate(list(self._pool.map(lambda part: self._search(part, setting), halves)))

    def index_bytes(self):
        return int(self.index.memory_bytes)  # vectors, neighbour lists, ids, entry points


# ---------------------------------------------------------------------- hnswlib
class Hnswlib(Method):
    family = "hnswlib"

    def __init__(self, m: int):
        self.m, self.name = m, f"hnswlib M={m}"
        self.options = {"M": m, "ef_construction": EF_CONSTRUCTION}
        self.settings = [{"ef": ef} for ef in EFS]
        self.index = None

    def build(self, base):
        import hnswlib

        self.index = hnswlib.Index(space="l2", dim=base.shape[1])
        self.index.init_index(max_elements=len(base), M=self.m, ef_construction=EF_CONSTRUCTION, random_seed=0)
        self.index.set_num_threads(1)
        self.index.add_items(base, num_threads=1)

    def search(self, queries, setting, threads):
        self.index.set_ef(max(setting["ef"], K))
        return self.index.knn_query(queries, k=K, num_threads=threads)[0].astype(np.int64)

    def index_bytes(self):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "index.bin"
            self.index.save_index(str(path))
            return path.stat().st_size


# ---------------------------------------------------------------------- faiss
class FaissHnsw(Method):
    family = "faiss HNSW"

    def __init__(self, m: int = 32):
        self.m, self.name = m, f"faiss HNSW{m}"
        self.options = {"M": m, "efConstruction": EF_CONSTRUCTION}
        self.settings = [{"ef": ef} for ef in EFS]
        self.index = None

    def build(self, base):
        import faiss

        faiss.omp_set_num_threads(1)
        self.index = faiss.IndexHNSWFlat(base.shape[1], self.m)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(base)

    def search(self, queries, setting, threads):
        self.index.hnsw.efSearch = max(setting["ef"], K)
        return _faiss_search(self.index, queries, threads)

    def index_bytes(self):
        import faiss

        return int(len(faiss.serialize_index(self.index)))


class FaissFlat(Method):
    """Exact search (brute force with BLAS): the bar any index has to beat."""

    family = "exact"
    name = "faiss IndexFlatL2 (exact)"

    def __init__(self):
        self.settings = [{}]
        self.index = None

    def build(self, base):
        import faiss

        self.index = faiss.IndexFlatL2(base.shape[1])
        self.index.add(base)

    def search(self, queries, setting, threads):
        return _faiss_search(self.index, queries, threads)

    def index_bytes(self):
        return int(self.index.ntotal * self.index.d * 4)


# ---------------------------------------------------------------------- ScaNN
# (leaves searched, candidates re-ranked exactly): ScaNN's two knobs, swept together
# from cheap to costly. Re-ranking keeps recall@10 from saturating at the quantiser's limit.
SCANN_SETTINGS = ((2, 30), (4, 40), (6, 50), (8, 60), (12, 80), (16, 100), (24, 120), (32, 150), (48, 200),
                  (64, 250), (96, 300), (128, 400), (192, 500), (256, 700), (384, 1000))


class Scann(Method):
    """ScaNN's usual setup: a k-means tree partition, anisotropic 4-bit product quantisation
    (2 dimensions per block) for scoring, then exact re-ranking of the best candidates."""

    family = "ScaNN"
    name = "ScaNN"

    def __init__(self, leaves: int | None = None):
        self.leaves = leaves
        self.settings = [{"leaves_to_search": leaves, "reorder": reorder} for leaves, reorder in SCANN_SETTINGS]
        self.searcher = None

    def build(self, base):
        from scann.scann_ops.py import scann_ops_pybind

        leaves = self.leaves or int(2 * np.sqrt(len(base)))  # ScaNN's guidance: about sqrt(N) leaves or more
        self.settings = [s for s in self.settings if s["leaves_to_search"] <= leaves]
        self.options = {"num_leaves": leaves, "dims_per_block": 2, "anisotropic_quantization_threshold": 0.2}
        builder = scann_ops_pybind.builder(base, K, "squared_l2")
        builder.set_n_training_threads(1)
        self.searcher = (builder.tree(num_leaves=leaves, num_leaves_to_search=8,
                                      training_sample_size=min(len(base), 250_000))
                         .score_ah(2, anisotropic_quantization_threshold=0.2)
                         .reorder(100)
                         .build())

    def search(self, queries, setting, threads):
        kwargs = {"leaves_to_search": setting["leaves_to_search"], "pre_reorder_num_neighbors": setting["reorder"]}
        if threads == 1:
            ids, _ = self.searcher.search_batched(queries, K, **kwargs)
        else:
            self.searcher.set_num_threads(threads)
            ids, _ = self.searcher.search_batched_parallel(queries, K, **kwargs)
        return np.asarray(ids, np.int64)

    def index_bytes(self):
        with tempfile.TemporaryDirectory() as folder:
            self.searcher.serialize(folder)
            return _directory_bytes(Path(folder))


def scann_status() -> dict:
    """Whether ScaNN imports here, and why not (its TF op library must match TensorFlow's ABI)."""
    try:
        import scann  # noqa: F401  (loads the TF ops, which fail on an ABI mismatch)
        from importlib.metadata import version

        return {"available": True, "version": version("scann")}
    except Exception as error:  # ImportError, or TF's NotFoundError for a mismatched op library
        return {"available": False, "reason": f"{type(error).__name__}: {error}"}
