"""checkov's Kubernetes policies over every rendered overlay, offline: nothing fails but the checks
.checkov.yaml skips, each skip has its reason, and no skip outlives the failure it was for.

checkov starts slowly (≈ 5 s of CPU before it reads a file), so one scan without skips serves every test
here and the skips are applied below; `checkov --config-file .checkov.yaml -f RENDERED.yaml` by hand
gives the same verdict."""

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, Rendered, checkov_path

CONFIG = ROOT / ".checkov.yaml"
OFFLINE_ENV = {"BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE", "LOG_LEVEL": "ERROR"}

# A pod spec that breaks the rules checkov must catch; it proves the scan really runs the checks.
INSECURE = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: insecure
  namespace: default
spec:
  selector:
    matchLabels: {app: insecure}
  template:
    metadata:
      labels: {app: insecure}
    spec:
      hostNetwork: true
      containers:
        - name: app
          image: busybox:latest
          securityContext:
            privileged: true
            allowPrivilegeEscalation: true
"""


def _checkov(files: list[Path], *extra: str) -> dict[str, Any]:
    # run from the files' directory so checkov reports short paths; --skip-download keeps it offline
    cwd = files[0].parent
    args = [checkov_path(), "--framework", "kubernetes", "--skip-download", "--quiet", "-o", "json", *extra]
    for f in files:
        args += ["-f", f.name]
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **OFFLINE_ENV})
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["check_type"] == "kubernetes"
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


def _failed_by_file(report: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report["results"]["failed_checks"]:
        out.setdefault(Path(f["file_path"]).name, []).append(f"{f['check_id']} {f['resource']}")
    return out


@pytest.fixture(scope="module")
def scan(rendered: dict[str, Rendered]) -> dict[str, Any]:
    out_dir = next(iter(rendered.values())).path.parent
    insecure = out_dir / "insecure.yaml"
    insecure.write_text(INSECURE)
    return _checkov([*(r.path for r in rendered.values()), insecure])


def _skips() -> dict[str, str]:
    """The skipped check ids of .checkov.yaml with the reason written after each."""
    text = CONFIG.read_text()
    config = yaml.safe_load(text)
    reasons = dict(re.findall(r"^\s*-\s*(CKV\w+)\s*#\s*(.+)$", text, re.MULTILINE))
    assert set(config["skip-check"]) == set(reasons), "every skip-check entry needs `# reason` on its line"
    return reasons


def test_the_config_is_what_the_scan_runs_with() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert set(config) == {"framework", "skip-download", "skip-check"}, set(config)
    assert config["framework"] == ["kubernetes"] and config["skip-download"] is True


def test_every_overlay_passes_checkov(scan: dict[str, Any], rendered: dict[str, Rendered]) -> None:
    skipped = set(_skips())
    failed = _failed_by_file(scan)
    for overlay, r in rendered.items():
        real = [f for f in failed.get(r.path.name, []) if f.split()[0] not in skipped]
        assert not real, f"{overlay}: checkov failures\n" + "\n".join(real)
    assert scan["summary"]["passed"] > 1000, scan["summary"]  # ~100 checks x ~130 resources
    assert scan["summary"]["resource_count"] >= sum(len(r.docs) for r in rendered.values()) - 10


def test_checkov_catches_an_insecure_pod(scan: dict[str, Any]) -> None:
    failed = {c.split()[0] for c in _failed_by_file(scan).get("insecure.yaml", [])}
    # privileged, privilege escalation, host network, latest tag, no probes, no limits, default namespace
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_19", "CKV_K8S_14", "CKV_K8S_8", "CKV_K8S_13",
            "CKV_K8S_21"} <= failed, failed


def test_each_skip_is_justified_and_still_needed(scan: dict[str, Any], rendered: dict[str, Rendered]) -> None:
    reasons = _skips()
    for check, reason in reasons.items():
        assert len(reason.split()) >= 12, f"{check}: say why it is skipped, not only that it is"
    ours = {r.path.name for r in rendered.values()}
    failing = {f["check_id"] for f in scan["results"]["failed_checks"] if Path(f["file_path"]).name in ours}
    assert set(reasons) <= failing, f"skipped but nothing fails it any more: {set(reasons) - failing}"
