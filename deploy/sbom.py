"""A CycloneDX 1.5 JSON SBOM of the image's Python packages, made from deploy/requirements.lock.

    python deploy/sbom.py                 # write deploy/sbom.cdx.json
    python deploy/sbom.py --check         # exit 1 if the committed SBOM is not the lock's

The lock is what the image installs (``pip install --require-hashes --no-deps -r
deploy/requirements.lock``, then the project without dependencies), so every package of
the image's virtual environment is in it with its exact version and every sha256 pip
accepts for it; the SBOM carries the same, as purls (``pkg:pypi/name@version``), plus the
dependency graph pip-compile wrote in its ``# via`` comments. It is deterministic (no
timestamp; the serial number is derived from the lock's bytes) so a stale SBOM shows as a
diff. The Dockerfile's build stage runs ``--check`` and copies the SBOM into the image.

Not covered: the base image's Debian packages and its own Python (scan the built image with
``syft`` or ``docker buildx build --sbom=true`` for those; deploy/README.md, "Supply chain").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
import uuid
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
LOCK = DEPLOY / "requirements.lock"
OUT = DEPLOY / "sbom.cdx.json"
PYPROJECT = DEPLOY.parent / "pyproject.toml"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==([^\s;\\]+)\s*(?:;\s*(.*?))?\s*\\?$")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> list[dict[str, object]]:
    """The packages of a pip-compile lock with hashes: ``[{"name", "version", "hashes",
    "via", "marker"}]`` in file order (``marker``: the environment marker, e.g.
    ``platform_machine == "x86_64"``, or None); ``via`` holds the normalised names of the packages (or the
    project, ``faec-rec``, or the image's extra requirements, ``-r``) that pulled it in."""
    packages: list[dict[str, object]] = []
    in_via = False
    for line in text.splitlines():
        pin = _PIN.match(line)
        if pin:
            packages.append({"name": normalise(pin.group(1)), "version": pin.group(2), "hashes": [], "via": [],
                             "marker": pin.group(3) or None})
            in_via = False
            continue
        if not packages or not line.startswith(" "):
            in_via = False
            continue
        current = packages[-1]
        current["hashes"].extend(_HASH.findall(line))  # type: ignore[union-attr]
        comment = line.strip()
        if comment.startswith("# via"):
            in_via = True
            comment = comment[len("# via"):].strip()
        elif in_via and comment.startswith("#"):
            comment = comment.lstrip("#").strip()
        else:
            continue
        if comment:
            parent = comment.split()[0]
            current["via"].append("-r" if parent == "-r" else normalise(parent))  # type: ignore[union-attr]
    return packages


def purl(name: str, version: str) -> str:
    return f"pkg:pypi/{name}@{version}"


def sbom(lock_text: str, project: dict[str, object]) -> dict[str, object]:
    """The CycloneDX document (a dict ready for ``json.dumps``) of ``lock_text``."""
    packages = read_lock(lock_text)
    name, version = str(project["name"]), str(project["version"])
    root = purl(normalise(name), version)
    refs = {p["name"]: purl(str(p["name"]), str(p["version"])) for p in packages}
    children: dict[str, list[str]] = {root: []}
    for p in packages:
        for parent in p["via"]:  # type: ignore[union-attr]
            key = root if parent in {"-r", normalise(name)} else refs.get(parent)
            if key is not None:
                children.setdefault(key, []).append(refs[p["name"]])
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'faec-rec-sbom:' + hashlib.sha256(lock_text.encode()).hexdigest())}",
        "version": 1,
        "metadata": {
            "component": {"type": "application", "bom-ref": root, "name": name, "version": version, "purl": root},
            "properties": [{"name": "faec-rec:source", "value": "deploy/requirements.lock"}],
        },
        "components": [
            {
                "type": "library",
                "bom-ref": refs[p["name"]],
                "name": p["name"],
                "version": p["version"],
                "purl": refs[p["name"]],
                "hashes": [{"alg": "SHA-256", "content": h} for h in p["hashes"]],  # type: ignore[union-attr]
                **({"properties": [{"name": "pip:environment-marker", "value": p["marker"]}]} if p["marker"] else {}),
            }
            for p in packages
        ],
        "dependencies": [{"ref": ref, "dependsOn": sorted(set(children.get(ref, [])))}
                         for ref in [root, *refs.values()]],
    }


def render(lock: Path = LOCK, pyproject: Path = PYPROJECT) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    return json.dumps(sbom(lock.read_text(), project), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed SBOM instead of writing it")
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render(args.lock, args.pyproject)
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} does not match {args.lock}: run `python deploy/sbom.py` and commit it", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
