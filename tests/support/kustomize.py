"""Renders deploy/kustomize with the real kustomize (`kubectl kustomize`), the
way `kubectl apply -k` does. A renderer of our own once agreed with the tests
and not with kubectl (it matched an image name kustomize had already renamed),
so the manifests are held to what the cluster would get."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

MISSING = ("kubectl is missing: the deploy tests render deploy/kustomize with `kubectl kustomize` "
           "(kubectl 1.27+ has kustomize v5 built in); `./run test` checks for it")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError(MISSING)
    return path


@functools.cache
def _render(directory: Path) -> str:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{done.stderr}")
    return done.stdout


def render(directory: Path) -> list[Doc]:
    """The documents `kubectl kustomize directory` prints (parsed afresh on each call)."""
    return [d for d in yaml.safe_load_all(_render(directory.resolve())) if d]


def containers(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def alert_rules(directory: Path) -> list[Doc]:
    """The alerting rules of the one PrometheusRule `directory` renders: the one
    list of Teller's alerts the tests read (the monitoring tests and the runbooks')."""
    (rule,) = [d for d in render(directory) if d["kind"] == "PrometheusRule"]
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
