"""The container image's Dockerfile (it cannot be built on these machines): hadolint's rules, plus the
project's own promises that hadolint does not know: a pinned slim base, a builder stage with a venv and
a runtime stage without build tools, a numeric non-root user matching the pods' runAsUser, and the
`tenure` exec-form entrypoint."""

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> tuple[dict[str, str], list[tuple[str, list[tuple[str, str]]]]]:
    """Global ARG defaults, and each stage as (name, its instructions)."""
    args: dict[str, str] = {}
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for ins, rest in instructions(text):
        if ins == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(result))
            result.append((name, [(ins, rest)]))
        elif not result:
            if ins == "ARG" and "=" in rest:
                k, v = rest.split("=", 1)
                args[k] = v
        else:
            result[-1][1].append((ins, rest))
    return args, result


def _resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[tuple[str, list[tuple[str, str]]]]]:
    return stages(DOCKERFILE.read_text())


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run([tool("hadolint"), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, "\n".join(
        f"{f['line']}: {f['code']} {f['message']}" for f in findings) or proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Proves the linter runs its rules (a wrapper that printed nothing would pass the test above)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD app.tar.gz /app\nRUN pip install requests\nUSER root\n"
                   "ENTRYPOINT tenure\n")
    proc = subprocess.run([tool("hadolint"), "--format", "json", str(bad)], capture_output=True, text=True,
                          timeout=60)
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3007", "DL3013", "DL3042", "DL3002", "DL3025"} <= codes, codes


def test_two_stages_on_a_pinned_slim_python(parsed: tuple[dict[str, str], list]) -> None:
    args, st = parsed
    assert [name for name, _ in st] == ["builder", "runtime"]
    for _, ins in st:
        image = _resolve(ins[0][1].split()[0], args)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    for ins, rest in instructions(DOCKERFILE.read_text()):
        assert ins != "ADD", "COPY, not ADD"
        assert ":latest" not in rest


def test_the_builder_installs_into_a_venv_without_cache(parsed: tuple[dict[str, str], list]) -> None:
    _, st = parsed
    builder = dict(st)["builder"]
    runs = [rest for ins, rest in builder if ins == "RUN"]
    assert any("python -m venv /opt/venv" in r for r in runs)
    pip = [r for r in runs if "pip install" in r]
    assert pip and all("--no-cache-dir" in r for r in pip)
    assert any(ins == "ENV" and "/opt/venv/bin" in rest for ins, rest in builder)


def test_the_runtime_stage_has_no_build_tools_and_a_numeric_non_root_user(parsed: tuple[dict[str, str], list]) -> None:
    _, st = parsed
    runtime = dict(st)["runtime"]
    for ins, rest in runtime:
        if ins == "RUN":
            assert "pip install" not in rest and "apt-get install" not in rest, rest
            assert not re.search(r"\b(gcc|build-essential|make)\b", rest), rest
    copies = [rest for ins, rest in runtime if ins == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime takes only the venv"
    users = [rest for ins, rest in runtime if ins == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and (not gid or gid.isdigit()), users[-1]
    last_user_at = max(i for i, (ins, _) in enumerate(runtime) if ins == "USER")
    assert all(ins != "RUN" for ins, _ in runtime[last_user_at:]), "nothing runs as root after USER"
    useradd = " ".join(rest for ins, rest in runtime if ins == "RUN")
    assert f"--uid {uid}" in useradd, "the user exists in /etc/passwd with that uid"
    # the pods run as the same uid (k8s/base)
    defaults = yaml.safe_load((ROOT / "k8s/base/patches/deployment-defaults.yaml").read_text())
    assert defaults["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    env = " ".join(rest for ins, rest in runtime if ins == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only"
    assert "PATH=/opt/venv/bin" in env


def test_the_entrypoint_is_tenure_in_exec_form(parsed: tuple[dict[str, str], list]) -> None:
    _, st = parsed
    runtime = dict(st)["runtime"]
    entry = [rest for ins, rest in runtime if ins == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["tenure"], "exec form: tenure is PID 1 and gets SIGTERM"
    cmd = [rest for ins, rest in runtime if ins == "CMD"]
    assert cmd and isinstance(json.loads(cmd[-1]), list)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tenure" in scripts
    assert [rest for ins, rest in runtime if ins == "EXPOSE"] == ["8000"]  # the APIs' containerPort in k8s/base


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or fnmatch.fnmatch(path, f"**/{pat}"):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for ins, rest in instructions(DOCKERFILE.read_text()):
        if ins == "COPY" and "--from=" not in rest:
            sources += shlex.split(rest)[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src, patterns), f"{src} is copied but excluded by .dockerignore"
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources, "pip install . needs the readme pyproject.toml names"
    for unwanted in (".git", ".venv", ".venv-tools", "tests", "bench", "k8s", ".tenure", "docs"):
        assert _dockerignored(unwanted, patterns), unwanted
