"""docs/configuration.md has one table row for every setting in shared/settings.py, and no row for a
setting that does not exist; a literal default written there is the real default."""

import re
from pathlib import Path
from typing import Any

from shared.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def table() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(TENURE_[A-Z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} has two rows"
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def test_every_setting_has_exactly_one_row() -> None:
    documented = set(table())
    real = {f"TENURE_{name.upper()}" for name in Settings.model_fields}
    assert not real - documented, f"undocumented settings: {sorted(real - documented)}"
    assert not documented - real, f"documented but not settings: {sorted(documented - real)}"


def test_literal_defaults_are_the_real_ones() -> None:
    rows = table()
    checked = 0
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        cell = rows[f"TENURE_{name.upper()}"][0]
        if default is None:
            assert not re.fullmatch(r"`[^`]*`", cell) or "HOST" in cell, f"{name}: default is unset, doc says {cell}"
            continue
        literal = re.match(r"`([^`]*)`", cell)
        assert literal, f"{name}: write the default ({_literal(default)!r}) in backticks"
        assert literal.group(1) == _literal(default), f"{name}: doc {literal.group(1)!r}, code {_literal(default)!r}"
        checked += 1
    assert checked > 30
