"""The operator documentation: the configuration reference is generated from
Settings and current, every alert has its runbook anchor, links resolve, and
the README stays short."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.kustomize import alert_rules

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "docs" / "operations.md"
OVERLAYS = sorted(p for p in (ROOT / "deploy" / "kustomize" / "overlays").iterdir() if p.is_dir())
#: A runbook_url: a file of this repository on a code host, and an anchor in it.
RUNBOOK_URL = re.compile(r"https://github\.com/[^/]+/[^/]+/blob/[^/]+/(?P<path>[^#]+)#(?P<anchor>[a-z0-9-]+)")


def test_configuration_reference_is_current():
    result = subprocess.run([sys.executable, "scripts/gen_config_doc.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from dataclasses import fields

    from teller.config import Settings

    text = OPS.read_text()
    for f in fields(Settings):
        assert f"| `{f.name}` |" in text, f.name


def test_config_doc_check_notices_a_stale_table(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_config_doc
    finally:
        sys.path.pop(0)
    source = (ROOT / "service/teller/config.py").read_text()
    doc = OPS.read_text()
    assert gen_config_doc.updated(doc, source) == doc
    changed = source.replace('"""host:port the gRPC server binds."""', '"""where to listen."""')
    assert changed != source
    assert "where to listen." in gen_config_doc.updated(doc, changed)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_of_its_own():
    """Each alert of the rendered PrometheusRule links (runbook_url) to a heading
    of docs/operations.md that is its own runbook, and each runbook there names
    an alert that exists."""
    text = OPS.read_text()
    headings = {_slug(h): h for h in re.findall(r"^#+ (.+)$", text, re.M)}
    runbooks = text.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^### Alert: (\S+)$", runbooks, re.M)
    for overlay in OVERLAYS:
        alerts = {r["alert"]: r["annotations"] for r in alert_rules(overlay)}
        assert alerts, overlay.name
        for alert, notes in alerts.items():
            link = RUNBOOK_URL.fullmatch(notes.get("runbook_url", ""))
            assert link, f"{overlay.name}: {alert} has no runbook_url into this repository"
            assert link["path"] == "docs/operations.md", (alert, link["path"])
            assert headings.get(link["anchor"]) == f"Alert: {alert}", (alert, link["anchor"])
            # Other renderers than GitHub's get the anchor from the explicit id.
            assert f'<a id="{link["anchor"]}"></a>\n### Alert: {alert}\n' in runbooks, alert
        assert sorted(documented) == sorted(alerts), f"runbooks for {sorted(documented)}, alerts {sorted(alerts)}"


def test_links_between_documents_resolve():
    for doc in [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "bench" / "README.md", ROOT / "deploy" / "README.md",
                ROOT / "clients" / "python" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.name}: {target}"


def test_exports_are_verified_with_their_signature():
    """`teller audit verify --file` checks an export's hash chain only, which an
    export rewritten with every hash recomputed still passes; a tenant checks an
    export with `teller audit verify-export`, which checks the signed head. The
    docs that hand out exports say so."""
    docs = [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "deploy" / "README.md",
            ROOT / "clients" / "python" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        text = doc.read_text()
        if "`teller audit export" in text:
            assert "`teller audit verify-export" in text, doc.relative_to(ROOT)
        for paragraph in re.split(r"\n\s*\n|\n- ", text):
            if "verify --file" in paragraph:
                assert "verify-export" in paragraph, f"{doc.relative_to(ROOT)}: {paragraph.strip()[:200]}"


def test_readme_is_short_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    # Short: an introduction, both clients and the way in (issue 21 puts the clients here).
    assert len(readme.splitlines()) < 110
    blocks = dict(re.findall(r"```(python|ts)\n(.*?)```", readme, re.S))
    assert set(blocks) == {"python", "ts"}
    assert all(len(code.strip().splitlines()) <= 10 for code in blocks.values()), blocks
    for doc in ("docs/operations.md", "docs/reference.md", "docs/performance.md"):
        assert f"]({doc}" in readme
    # The reference material moved, not lost.
    reference = (ROOT / "docs" / "reference.md").read_text()
    for section in ("## Spend policy", "## Calling it from a service", "## Protocols", "## Security model"):
        assert section in reference


def test_each_guide_has_its_own_document():
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/policy.md", "docs/clients.md", "bench/README.md", "demo/tour.py"):
        assert f"]({doc}" in readme, doc
    policy = (ROOT / "docs" / "policy.md").read_text()
    for text in ('"budgets": [', "budget_exhausted:<name>", "| `allow_unknown_assets` |", "| `mpp_mode` |"):
        assert text in policy, text
    clients = (ROOT / "docs" / "clients.md").read_text()
    for text in ("TellerTransport(", "TellerAdapter(", "teller.pay(", "teller.sign(", "outbound_allow"):
        assert text in clients, text
    bench = (ROOT / "bench" / "README.md").read_text()
    for text in ("h2load", "gRPC floor", "min_wal_size", "compare_builds.py"):
        assert text in bench, text
    # Old benchmark runs live in git history; the latest run is the one in the tree.
    results = ROOT / "bench" / "results"
    assert (results / "results.md").exists()
    assert not [p.name for p in results.iterdir() if p.name.startswith(("previous-", "slow-phase-"))]
