"""Liquid templates: validation on save and rendering with a profile and its trigger (pure functions).

HTML bodies are rendered with auto-escaping (a trait such as a first name can never inject markup);
subjects and text bodies are plain text.
"""

from dataclasses import dataclass
from typing import Any

from liquid import Environment
from liquid.exceptions import LiquidError

_html = Environment(autoescape=True)
_plain = Environment(autoescape=False)


class TemplateError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None


def _env(field: str) -> Environment:
    return _html if field == "html" else _plain


def validate(fields: dict[str, str | None]) -> None:
    """Parse every field; raise :class:`TemplateError` naming the first one that does not parse."""
    for name, source in fields.items():
        if source is None:
            continue
        try:
            _env(name).from_string(source)
        except LiquidError as exc:
            raise TemplateError(name, str(exc).splitlines()[0]) from None


def render(fields: dict[str, str | None], variables: dict[str, Any]) -> Rendered:
    out: dict[str, str | None] = {}
    for name, source in fields.items():
        if source is None:
            out[name] = None
            continue
        try:
            out[name] = _env(name).from_string(source).render(**variables)
        except LiquidError as exc:
            raise TemplateError(name, str(exc).splitlines()[0]) from None
    return Rendered(subject=(out.get("subject") or "").strip(), html=out.get("html"), text=out.get("text"))


FIELDS = ("subject", "html", "text")


def locale_chain(locale: Any) -> list[str]:
    """``fr-CA`` → ``["fr-ca", "fr"]``; ``fr_CA`` and other spellings alike (the default comes after)."""
    if not isinstance(locale, str) or not locale.strip():
        return []
    parts = locale.strip().replace("_", "-").lower().split("-")
    return ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]


def for_locale(template: dict[str, Any], locale: Any) -> tuple[dict[str, str | None], str | None]:
    """The fields to render for a profile's locale (fallback chain, then the default), and which variant."""
    variants = {k.lower(): v for k, v in (template.get("locales") or {}).items()}
    for code in locale_chain(locale):
        if code in variants:
            variant = variants[code]
            return {f: variant[f] if variant.get(f) is not None else template.get(f) for f in FIELDS}, code
    return {f: template.get(f) for f in FIELDS}, None


def variables_for(profile: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any]:
    """What a template sees: ``profile`` (traits plus ids), ``traits`` and the trigger ``event``."""
    traits = dict(profile.get("traits") or {})
    return {
        "profile": {**traits, "id": profile.get("id"), "user_id": profile.get("user_id")},
        "traits": traits,
        "event": trigger,
    }
