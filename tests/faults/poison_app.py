"""The project's Celery app plus two test-only tasks, for a REAL worker process:
``faec_rec.test.crash`` kills its own process (a poison task: a decoder crash, the
OOM killer), ``faec_rec.test.ok`` returns. Each run appends a line to
``$FAEC_TEST_RUNS_FILE`` so the test can count runs. No model is loaded (these
tasks need none): the warm-up hook is disconnected."""
from __future__ import annotations

import os
import signal
from typing import Any

from celery.signals import worker_process_init

from faec_rec.workers import app as app_module

worker_process_init.disconnect(app_module._warm_up)
app = app_module.make_app()


def _note(what: str) -> None:
    with open(os.environ["FAEC_TEST_RUNS_FILE"], "a") as f:
        f.write(what + "\n")


@app.task(name="faec_rec.test.crash", shared=False, bind=True)
def crash(self: Any, payload: dict[str, Any]) -> None:
    _note(f"crash {self.request.id}")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="faec_rec.test.ok", shared=False, bind=True)
def ok(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
    _note(f"ok {self.request.id}")
    return {"ok": payload}


crash.on_parked = lambda args, kwargs, reason: _note(f"parked {reason}")
