"""The supply chain, checked statically: hashed locks that cover pyproject's
dependencies and that the image and `./run test` install from, an installed
environment that matches the lock, the license pyproject names, the base image
named by tag or digest (no registry is reachable from the tests)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (version, hashes, marker) of a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, list[str], str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split("--hash=")
        req = Requirement(spec.strip())
        (op_version,) = [str(s) for s in req.specifier]
        assert op_version.startswith("=="), line
        pins[_norm(req.name)] = (op_version[2:], [h.strip() for h in hashes], str(req.marker or ""))
    return pins


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"].get("dependencies", [])
    return [Requirement(d) for d in (deps if extra else [*deps, *client])]


def test_locks_are_hashed_and_cover_every_declared_dependency():
    runtime, dev = _pins(ROOT / "requirements/lock.txt"), _pins(ROOT / "requirements/dev.txt")
    for pins in (runtime, dev):
        assert pins and all(hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)
                            for _v, hashes, _m in pins.values())
    for lock, reqs in ((runtime, _declared()), (dev, _declared() + _declared("dev"))):
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate():
                continue
            assert _norm(req.name) in lock, f"{req.name} is not in the lock: run ./run lock"
            assert req.specifier.contains(lock[_norm(req.name)][0], prereleases=True), \
                f"{req.name}{req.specifier} but the lock pins {lock[_norm(req.name)][0]}: run ./run lock"
    # The image runs the versions the tests ran with.
    assert {n: v[0] for n, v in runtime.items()} == {n: dev[n][0] for n in runtime}
    assert "pytest" not in runtime and "ruff" not in runtime


def test_the_environment_matches_the_lock():
    """`./run test` installs from requirements/dev.txt: a stale environment (or a
    lock nobody regenerated) shows up here."""
    wrong = []
    for name, (pinned, _hashes, marker) in _pins(ROOT / "requirements/dev.txt").items():
        if marker and not Marker(marker).evaluate():
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "(missing)"
        if installed != pinned:
            wrong.append(f"{name}: lock {pinned}, installed {installed}")
    assert not wrong, wrong


def test_run_and_dockerfile_install_only_from_the_locks():
    run = (ROOT / "run").read_text()
    assert "--require-hashes -r requirements/dev.txt" in run
    assert re.search(r"want=.*requirements/dev\.txt", run), "the install stamp must notice a changed lock"
    assert "uv\" pip compile" in run and "--generate-hashes" in run  # ./run lock
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in docker and "requirements/lock.txt" in docker
    assert re.search(r"pip install --no-index --no-deps /wheels", docker)
    for image in re.findall(r"^FROM\s+(\S+)", docker, re.M):
        # A tag, optionally pinned by digest (docs/operations.md "Supply chain"); never latest.
        assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), image
        assert ":latest" not in image


def test_license_security_policy_and_changelog():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "Apache-2.0" in str(project["license"])
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "Reporting a vulnerability" in (ROOT / "SECURITY.md").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{project['version']}]" in changelog
