# The README's two commands: `make demo` (set up, run the main job on the
# embedded default) and `make test` (set up, run the whole test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_REDIS_PORT ?= 6379
TEST_MQTT_PORT ?= 1883

.PHONY: setup demo test bench clean sbom pin-images

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,dlib]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/faec-rec demo

test: setup
	# Debian's chromium for the web pages' browser tests (Playwright drives it; no browser download)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser tests will skip"
	$(BIN)/python -m faec_rec.redis_server ensure --port $(TEST_REDIS_PORT)
	# the MQTT sink's tests talk to a real Mosquitto: install it when missing, start it unless one answers
	command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || (apt-get update -q && apt-get install -y -q mosquitto)
	$(BIN)/python -m faec_rec.sinks.broker ensure --port $(TEST_MQTT_PORT)
	$(BIN)/python -m pytest

# deploy/sbom.cdx.json from deploy/requirements.lock (after re-locking; the image build checks it)
sbom:
	$(PY) deploy/sbom.py

# base images by digest (needs a registry: docker buildx, crane or skopeo); commit the result
pin-images:
	deploy/pin-images

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
