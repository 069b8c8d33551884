"""GET /api/v1/models/training and the Models page's progress box, fed by a real (short)
training run on the app's Redis (synthetic features: no worker, no TensorFlow model files)."""
from __future__ import annotations

from typing import Any

import numpy as np

from faec_rec.training.retrain import run
from tests.unit.test_training_retrain import _domain_features, _enrol, _reference
from tests.web.conftest import bearer


def test_training_progress_through_the_api_and_the_page(http: Any, app: Any, role_keys: dict[str, str],
                                                        web_settings: Any, rng: np.random.Generator) -> None:
    client = app.state.client
    viewer = bearer(role_keys["viewer"])
    assert http.get("/api/v1/models/training").status_code == 401
    assert http.get("/api/v1/models/training", headers=viewer).json()["state"] == "idle"
    feats, labels = _domain_features(rng, 30, 6)
    _enrol(client.redis, client.keys, web_settings.data_dir, feats, labels)
    settings = web_settings.model_copy(update={"training": web_settings.training.model_copy(update={
        "epochs": 4, "identities_per_batch": 8, "images_per_identity": 4, "anchor_weight": 0.2, "max_lfw_drop": 0.5})})
    during: list[dict[str, Any]] = []

    def look(stage: str, done: int, total: int) -> None:
        if stage == "train" and done == 2:
            during.append(http.get("/api/v1/models/training", headers=viewer).json())

    summary = run(settings, redis=client.redis, reference=_reference(rng), progress=look)
    (mid,) = during
    assert mid["state"] == "running" and mid["stage"] == "train" and (mid["epoch"], mid["epochs"]) == (2, 4)
    assert isinstance(mid["loss"], float) and 30 < mid["percent"] < 90
    end = http.get("/api/v1/models/training", headers=viewer).json()
    assert end["state"] == "done" and end["percent"] == 100 and end["result"]["version"] == summary["version"]
    page = http.get("/models", headers={**viewer, "Accept": "text/html"}).text
    assert 'id="train-progress"' in page and summary["version"] in page and " hidden" not in page.split('id="train-progress"')[1][:200]


def test_train_now_shows_its_progress_on_the_models_page(web_settings: Any, rng: np.random.Generator) -> None:
    """Chromium on the real server: "Train now" queues a run; a real training run (standing in
    for the training worker, paused at epoch 2 while the page is looked at) moves the bar; at
    the end the new version appears."""
    import threading

    import pytest

    from tests.web.server import ServerThread
    from tests.web.test_web_service import CHROMIUM, _login, _shot

    if not __import__("pathlib").Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    settings = web_settings.model_copy(update={"training": web_settings.training.model_copy(update={
        "epochs": 4, "identities_per_batch": 8, "images_per_identity": 4, "anchor_weight": 0.2, "max_lfw_drop": 0.5})})
    with ServerThread(settings) as server, sync_playwright() as p:
        client = server.app.state.client
        server.app.state.keystore.create("admin", "admin-key", password="admin-password-123", actor="test")
        feats, labels = _domain_features(rng, 30, 6)
        _enrol(client.redis, client.keys, settings.data_dir, feats, labels)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page = _login(context, server.url, "admin")
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{server.url}/models")
            assert page.locator("#train-progress").is_hidden()
            page.click("#train")
            page.locator("#train-title", has_text="Training queued").wait_for()
            assert page.locator("#train").is_disabled()
            reached, go = threading.Event(), threading.Event()

            def pause(stage: str, done: int, total: int) -> None:
                if stage == "train" and done == 2:
                    reached.set()
                    go.wait(120)

            worker = threading.Thread(target=lambda: run(settings, redis=client.redis, reference=_reference(rng),
                                                         progress=pause), daemon=True)
            worker.start()
            assert reached.wait(120)
            page.locator("#train-detail", has_text="training the head · epoch 2 of 4").wait_for()
            assert "loss" in page.inner_text("#train-detail")
            assert 30 < float(page.get_attribute("#train-bar", "value")) < 90
            _shot(page, "models-training")
            go.set()
            worker.join(120)
            page.locator("table.list tbody tr", has_text="head-1").wait_for()  # reloaded with the new version
            page.locator("#train-title", has_text="Last training").wait_for()
            assert "head-1" in page.inner_text("#train-result")
            _shot(page, "models-trained")
        except Exception:
            _shot(page, "FAILED-models")
            raise
        finally:
            go_set = locals().get("go")
            if go_set is not None:
                go_set.set()
            browser.close()
        assert not errors, errors
