"""Shared test setup: the Keras backend, quiet TensorFlow, fixed seeds, no network, CPU only.

The suite is a backend matrix (``./dev.sh test``): everything runs under
KERAS_BACKEND=tensorflow (the default here), and the tests marked ``backend_agnostic``
run again under ``jax`` and ``torch``. Under those two, the run behaves as on a machine
without TensorFlow (the GPU machines the model side is meant for have JAX and PyTorch
but no TensorFlow):

- ``import tensorflow`` fails (ModuleNotFoundError), so model-side code that needs
  TensorFlow by accident fails loudly; optional probes (Keras', torch's) see it absent;
- test modules that never mention ``backend_agnostic`` are not imported at all (they may
  import TensorFlow at the top), and unmarked tests in the other modules are skipped.
"""

import os
import random
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = os.environ["KERAS_BACKEND"]
MARKER = "backend_agnostic"
SEED = 1234


TF_HIDDEN = (f"tests/conftest.py hides TensorFlow under KERAS_BACKEND={BACKEND}: code that {MARKER} tests reach "
             "must run without it (import TensorFlow lazily, only where the feature is TensorFlow by nature), "
             f"and TensorFlow-only tests must not be marked {MARKER}")

if BACKEND == "jax":
    # Tests run many small programs once each (weight initialisers compile one per shape),
    # so XLA's compile time dominates: cheaper LLVM optimisation cut the JAX run by a third
    # (zoo models build twice as fast), with results within the tests' tolerances.
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

if BACKEND != "tensorflow":
    if "tensorflow" in sys.modules:
        raise RuntimeError(f"tensorflow was imported before tests/conftest.py under KERAS_BACKEND={BACKEND}")
    # Python's own way to mark a module absent: `import tensorflow` raises ModuleNotFoundError
    # and importlib.util.find_spec("tensorflow") is None, as where it is not installed.
    sys.modules["tensorflow"] = None


def pytest_configure(config):
    import keras

    if keras.backend.backend() != BACKEND:
        raise pytest.UsageError(f"Keras runs on {keras.backend.backend()!r} but KERAS_BACKEND is {BACKEND!r}: "
                                "something imported keras before tests/conftest.py set the backend")


def pytest_report_header(config):
    return f"keras backend: {BACKEND}" + ("" if BACKEND == "tensorflow" else " (TensorFlow hidden)")


class _TensorFlowOnlyModule(pytest.File):
    """A test module with no backend-agnostic tests, under JAX or PyTorch: not imported."""

    def collect(self):
        return []


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    if BACKEND != "tensorflow" and MARKER not in module_path.read_text(encoding="utf-8"):
        return _TensorFlowOnlyModule.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"needs TensorFlow: not marked {MARKER} (runs under KERAS_BACKEND=tensorflow)")
    for item in items:
        if not item.get_closest_marker(MARKER):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if isinstance(error, ImportError) and (error.name or "").partition(".")[0] == "tensorflow" and BACKEND != "tensorflow":
        report.sections.append(("why tensorflow is missing", TF_HIDDEN))
    return report


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


@pytest.fixture(autouse=True)
def _seed_keras():
    """Same seeds before every test, per backend. keras.utils.set_random_seed imports
    TensorFlow whenever it can (to seed tf.data), so under JAX and PyTorch the generators
    are seeded one by one; Keras draws its layers' seeds from Python's random."""
    if BACKEND == "tensorflow":
        import keras

        keras.utils.set_random_seed(SEED)  # Python, NumPy and TensorFlow's global seed
        return
    random.seed(SEED)
    np.random.seed(SEED)
    if BACKEND == "torch":
        import torch

        torch.manual_seed(SEED)


def pytest_terminal_summary(terminalreporter):
    """For ./dev.sh test's totals across backends: "passed failed errors skipped", one line per run."""
    path = os.environ.get("HYBRID_KERAS_TEST_COUNTS")
    if path:
        counts = [len(terminalreporter.stats.get(key, [])) for key in ("passed", "failed", "error", "skipped")]
        with open(path, "a", encoding="utf-8") as f:
            f.write(" ".join(map(str, counts)) + "\n")
