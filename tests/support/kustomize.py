"""A small renderer for the subset of Kustomize that deploy/kustomize uses
(resources, namespace, labels, images, replicas, strategic-merge patches), so
the manifests' invariants can be tested without a kustomize binary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                   for x in base + patch):
        # Strategic merge of named lists (containers, volumes, env): by name.
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def render(directory: Path) -> list[Doc]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for res in k.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for label in k.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in k:
        for d in docs:
            d.setdefault("metadata", {})["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for d in docs:
            for c in _containers(d):
                name, _, _ = c["image"].partition("@")
                name = name.rsplit(":", 1)[0] if ":" in name.split("/")[-1] else name
                if name in (image["name"], image.get("newName")):
                    new = image.get("newName", name)
                    if "digest" in image:
                        c["image"] = f"{new}@{image['digest']}"
                    elif "newTag" in image:
                        c["image"] = f"{new}:{image['newTag']}"
                    else:
                        old_tag = c["image"][len(name):]
                        c["image"] = new + old_tag
    for rep in k.get("replicas", []):
        for d in docs:
            if d.get("metadata", {}).get("name") == rep["name"] and "replicas" in d.get("spec", {}):
                d["spec"]["replicas"] = rep["count"]
    for patch in k.get("patches", []):
        p = yaml.safe_load((directory / patch["path"]).read_text())
        for i, d in enumerate(docs):
            if (d["kind"], d["metadata"]["name"]) == (p["kind"], p["metadata"]["name"]):
                docs[i] = _merge(d, {k2: v for k2, v in p.items() if k2 != "metadata"})
    return docs


def containers(doc: Doc) -> list[Doc]:
    return _containers(doc)
