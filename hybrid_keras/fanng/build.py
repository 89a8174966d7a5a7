"""Compile the FANNG TensorFlow ops against the TensorFlow that is installed.

Run as ``python -m hybrid_keras.fanng.build [--if-stale] [--debug]``. The flags come
from ``tf.sysconfig`` (include path, C++ ABI, standard, Eigen alignment) so the
library matches the running TensorFlow; nothing is hard-coded. ``--if-stale``
rebuilds only when a source file or the TensorFlow version changed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

OPS_DIR = Path(__file__).resolve().parent / "ops"
LIBRARY_DIR = Path(__file__).resolve().parent / "_ops"
LIBRARY_PATH = LIBRARY_DIR / "_fanng_ops.so"
STAMP_PATH = LIBRARY_DIR / "_fanng_ops.stamp"

# Portable optimisation: SSE4.2/AVX2/FMA kernels are chosen at run time by the
# sources themselves (target attributes), so the library runs on any x86-64.
OPTIMISATION_FLAGS = ["-O3", "-fPIC", "-shared", "-Wno-deprecated-declarations", "-Wno-ignored-attributes"]


def _sources() -> list[Path]:
    return sorted(OPS_DIR.glob("*.cc"))


def _fingerprint(debug: bool) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    digest.update(tf.__version__.encode())
    digest.update(repr(tf.sysconfig.get_compile_flags()).encode())
    digest.update(b"debug" if debug else b"release")
    for path in sorted(OPS_DIR.glob("*")):
        if path.suffix in (".cc", ".h"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build(debug: bool = False, if_stale: bool = False, verbose: bool = True) -> Path | None:
    """Compile the op library; returns its path (None when there is nothing to build)."""
    import tensorflow as tf

    sources = _sources()
    if not sources:
        return None
    fingerprint = _fingerprint(debug)
    if if_stale and LIBRARY_PATH.exists() and STAMP_PATH.exists():
        if STAMP_PATH.read_text().strip() == fingerprint:
            return LIBRARY_PATH
    LIBRARY_DIR.mkdir(exist_ok=True)
    cxx = os.environ.get("CXX", "g++")
    flags = ["-g", "-O1", "-fPIC", "-shared", "-Wno-deprecated-declarations"] if debug else OPTIMISATION_FLAGS
    command = [
        cxx,
        *tf.sysconfig.get_compile_flags(),
        *flags,
        "-pthread",
        *map(str, sources),
        "-o",
        str(LIBRARY_PATH) + ".tmp",
        *tf.sysconfig.get_link_flags(),
    ]
    if verbose:
        print(f"[fanng] compiling {len(sources)} source(s) with {cxx} against TensorFlow {tf.__version__} ...", flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise RuntimeError(
            "building the FANNG op library failed (command: " + " ".join(command) + "). "
            "It needs g++ with C++17 and the TensorFlow headers of the installed tensorflow package."
        )
    os.replace(str(LIBRARY_PATH) + ".tmp", LIBRARY_PATH)
    STAMP_PATH.write_text(fingerprint + "\n")
    if verbose:
        print(f"[fanng] built {LIBRARY_PATH}", flush=True)
    return LIBRARY_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-stale", action="store_true", help="skip when sources and TensorFlow are unchanged")
    parser.add_argument("--debug", action="store_true", help="-O1 -g build for debugging")
    args = parser.parse_args(argv)
    build(debug=args.debug, if_stale=args.if_stale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
