"""Keep TensorFlow's native start-up lines off the terminal unless asked for (``-v``).

TensorFlow 2.21 logs through absl before ``absl::InitializeLog()`` runs, so
``TF_CPP_MIN_LOG_LEVEL`` no longer silences its start-up lines ("All log messages before
absl::InitializeLog() ...", the oneDNN and CPU-feature notices). They are written by C++
straight to file descriptor 2 while the shared libraries load. :func:`install` adds an
import hook that, for the one import of ``tensorflow``, points fd 2 at a temporary file,
then restores it and replays every line that is not one of those known notices, so real
errors are never swallowed. The hook lives in ``sys.meta_path``, so forked worker
processes inherit it; spawned ones inherit ``FAEC_QUIET_TF`` and install it at start.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import threading
from types import ModuleType
from typing import Any, Sequence

ENV = "FAEC_QUIET_TF"
# What TensorFlow prints while loading on a healthy machine (all informational).
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ (port\.cc|cpu_feature_guard\.cc|cuda_\w+\.cc|gpu_device\.cc)"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)"
)
_lock = threading.Lock()


def is_noise(line: str) -> bool:
    """True for one of TensorFlow's informational start-up lines."""
    return bool(_NOISE.match(line))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with silenced_stderr():
            self.inner.exec_module(module)  # type: ignore[attr-defined]


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``tensorflow`` package (once)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != "tensorflow" or "tensorflow" in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class silenced_stderr:  # noqa: N801 - used as a context manager
    """Route fd 2 into a temporary file; on exit restore it and replay what is not noise."""

    def __enter__(self) -> "silenced_stderr":
        _lock.acquire()
        try:
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stderr must not stop the import
            pass
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                pass
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._tmp.seek(0)
            text = self._tmp.read().decode("utf-8", "replace")
            self._tmp.close()
            kept = [line for line in text.splitlines() if line.strip() and not is_noise(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
        finally:
            _lock.release()


def quieted() -> Any:
    """:class:`silenced_stderr` when this process is quiet (:func:`install`), else a no-op context.

    For native calls that print on their own, e.g. TensorFlow Lite's "Created TensorFlow Lite
    XNNPACK delegate" when an interpreter is built.
    """
    import contextlib

    if os.environ.get(ENV) == "1":
        return silenced_stderr()
    return contextlib.nullcontext()


def install(quiet: bool = True) -> None:
    """Silence TensorFlow's start-up lines in this process (and its children) when ``quiet``.

    Also sets ``TF_CPP_MIN_LOG_LEVEL=2`` (later warnings) and :data:`ENV` for spawned
    children. ``quiet=False`` (``-v``) removes the hook and lets everything through.
    """
    if not quiet:
        os.environ[ENV] = "0"
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]
        return
    os.environ[ENV] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def install_from_environment() -> None:
    """In a spawned worker: follow the parent's choice (quiet unless ``FAEC_QUIET_TF=0``)."""
    if os.environ.get(ENV, "1") != "0":
        install(True)
