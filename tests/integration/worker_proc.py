"""Start and stop a REAL Celery worker subprocess for integration tests and benchmarks.

The worker is ``celery -A faec_rec.workers.app worker`` in its own process
group, configured only through the environment (FAEC_REDIS_URL, FAEC_PREFIX,
FAEC_DATA_DIR, ...), exactly as a deployment runs it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_SEED: Path | None = None


def seeded_models() -> Path | None:
    """A folder of converted models (the ``.keras`` file and the runtime's cached copy)
    built once per process in a temporary folder, or None when building fails. A worker
    converts on first use into its own data folder, which cost every test worker a
    TensorFlow import and a conversion (~6-8 s); the files are checksum-verified on load,
    so a worker given links to them behaves as a deployment's second start does."""
    global _SEED
    if _SEED is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="faec-test-models-"))
        code = ("import numpy as np; from pathlib import Path; from faec_rec.faces.embed import Embedder;"
                f"Embedder(cache_dir=Path({str(folder)!r})).features(np.zeros((1, 150, 150, 3), np.uint8))")
        built = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=600,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        _SEED = folder if built.returncode == 0 else Path()
    return _SEED if _SEED != Path() else None


def seed_models(data_dir: Path) -> None:
    """Hard-link (else copy) :func:`seeded_models` into ``data_dir/models`` unless it exists."""
    import shutil

    source, target = seeded_models(), Path(data_dir) / "models"
    if source is None or target.exists():
        return
    target.mkdir(parents=True)
    for f in source.iterdir():
        if f.suffix in (".lock", ".tmp"):
            continue
        try:
            os.link(f, target / f.name)
        except OSError:
            shutil.copy2(f, target / f.name)


@dataclass
class WorkerProcess:
    """One worker subprocess (prefork pool, ``concurrency`` children).

    ``env`` adds/overrides environment variables (e.g. FAEC_WORKERS__...).
    The log goes to ``data_dir/worker-<name>.log``.
    """

    redis_url: str
    prefix: str
    data_dir: Path
    queues: tuple[str, ...] = ("frames", "enrol")
    concurrency: int = 1
    env: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: "w" + uuid.uuid4().hex[:6])
    app: str = "faec_rec.workers.app"  # the Celery app module (tests may add tasks to it)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    use_seeded_models: bool = True  # start from converted models built once (see seed_models)
    pool: str = "prefork"  # Celery's pool: "solo" runs tasks in the worker process itself

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / f"worker-{self.name}.log"

    def start(self) -> WorkerProcess:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        if self.use_seeded_models:
            seed_models(Path(self.data_dir))
        env = dict(os.environ)
        env.update({
            "FAEC_REDIS_URL": self.redis_url,
            "FAEC_PREFIX": self.prefix,
            "FAEC_DATA_DIR": str(self.data_dir),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env)
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-Q", ",".join(self.queues), "-c", str(self.concurrency), "--pool", self.pool,
            "-n", f"{self.name}@%h", "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        log = open(self.log_path, "ab")
        # Own session: the whole worker (parent + pool children) can be killed as one.
        self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 120.0) -> WorkerProcess:
        """Block until the worker consumes its queues (its "ready." line); raises on exit/timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"{self.name}@" in self.log_text() and " ready." in self.log_text():
                return self
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {timeout:.0f}s:\n{self.log_text()[-3000:]}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole worker at once (parent and pool children): a lost machine."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in ``timeout`` s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        # Pool children left behind by a dead parent are in the same group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def rss_mb(self) -> float:
        """Resident memory of the worker and its children, MiB (from /proc)."""
        if self.process is None:
            return 0.0
        total = 0
        for pid in [self.process.pid, *_children(self.process.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total / 1024.0

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    out = [int(p) for p in text.split()]
    for child in list(out):
        out.extend(_children(child))
    return out
