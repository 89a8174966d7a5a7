"""Shared benchmark plumbing: paths, timing, CPU pinning, and writing results as JSON and PNG."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Hashable, Iterator, Mapping, Sequence

from hybrid_keras import CACHE_DIR  # noqa: F401  (the benchmarks' caches live there too)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
RESULTS_DIR = REPO / "benchmarks" / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    import tensorflow as tf

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fastest_interleaved(tasks: Mapping[Hashable, Callable[[], object]], rounds: int,
                        clocks: Sequence[Callable[[], float]] | None = None) -> dict[Hashable, list[float]]:
    """Fastest time of each task over ``rounds`` rounds, every task timed once per round.

    On a shared machine a slow spell then costs every competitor a round rather than
    landing on whichever one was being timed at that moment; keeping each task's fastest
    round drops the spells. Rounds alternate direction, so no task always follows the same
    neighbour (caches, frequency). ``clocks`` (default: wall time) are read around each
    run; the result holds each task's fastest time on each clock, in that order
    (``time.process_time`` beside ``time.perf_counter`` gives the CPU time of a
    single-threaded task, which other processes on its core do not inflate).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1. Received: {rounds}")
    clocks = list(clocks) if clocks is not None else [time.perf_counter]
    keys = list(tasks)
    best = {key: [float("inf")] * len(clocks) for key in keys}
    for round_number in range(rounds):
        for key in keys if round_number % 2 == 0 else reversed(keys):
            before = [clock() for clock in clocks]
            tasks[key]()
            after = [clock() for clock in clocks]
            best[key] = [min(b, a - s) for b, a, s in zip(best[key], after, before)]
    return best


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the calling thread only
        return [0]


@contextlib.contextmanager
def pinned_to_cpus(cpus: set[int] | None) -> Iterator[set[int]]:
    """Run the block with every thread of this process on ``cpus`` (None: leave as is).

    Sets the affinity of all existing threads (thread pools started earlier included;
    threads started inside inherit it) and restores the previous set afterwards. Where
    affinity is unsupported the block runs unpinned.
    """
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        return
    previous = os.sched_getaffinity(0)
    for tid in _thread_ids():
        with contextlib.suppress(OSError):  # a thread may have ended meanwhile
            os.sched_setaffinity(tid, cpus)
    try:
        yield set(cpus)
    finally:
        for tid in _thread_ids():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, previous)


class Timer:
    """Wall-clock and process CPU seconds of a ``with`` block (CPU time is steadier on a shared
    machine): ``timer.wall``, ``timer.cpu``."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


# The staged data folder of each dataset builder the benchmarks read.
STAGED_FOLDERS = {"mnist": "mnist", "cifar10_jpeg": "cifar10_jpg"}


def staged_arrays(data_dir: Path, name: str, split: str, **pairs):
    """``(images, labels)`` NumPy arrays of a staged dataset's ``split`` (a TFDS slice such as
    ``"test[:8000]"``), read through its builder; ``pairs`` go to ``image_label_pairs`` (size,
    padding, RGB)."""
    from hybrid_keras import datasets

    examples = datasets.load(name, split=split, manual_dir=Path(data_dir) / STAGED_FOLDERS[name])
    return datasets.to_numpy(datasets.image_label_pairs(examples, **pairs))


def machine_load() -> dict:
    """The 1/5/15-minute load averages and CPU count: how busy the machine was around a run."""
    one, five, fifteen = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"load_1min": one, "load_5min": five, "load_15min": fifteen, "cpu_count": os.cpu_count()}


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path
