"""Liquid templates: validation on save and rendering with a profile and its trigger (pure functions).

HTML bodies are rendered with auto-escaping (a trait such as a first name can never inject markup);
subjects and text bodies are plain text. Snippets (the workspace's shared partials) are available to
``{% render 'name' %}`` and ``{% include 'name' %}``. Rendered HTML gets its ``<style>`` rules inlined
for email clients (css-inline), and a plain-text part is generated from it when the template has none.
"""

import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from typing import Any

import css_inline
from liquid import BoundTemplate, DictLoader, Environment
from liquid.exceptions import LiquidError, TemplateNotFoundError

from shared.html_text import html_to_text

_html = Environment(autoescape=True)
_plain = Environment(autoescape=False)
_inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)
_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")  # what str.splitlines() breaks on


class TemplateError(ValueError):
    def __init__(self, field: str, message: str, line: int | None = None, column: int | None = None):
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{field}: {message}{where}")
        self.field = field
        self.message = message + where
        self.line, self.column = line, column


VARIABLES = ("profile", "traits", "event", "referral", "loyalty")  # what a template sees (and programs add)


def _position(source: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character offset (past the end: the end)."""
    index = len(source) if index < 0 or index > len(source) else index
    line_start = source.rfind("\n", 0, index) + 1
    return source.count("\n", 0, index) + 1, index - line_start + 1


def _syntax_error(field: str, source: str, exc: LiquidError) -> TemplateError:
    """The error with where it is in ``source`` (python-liquid knows the token; an unclosed block is noticed at
    the end of the source)."""
    token = getattr(exc, "token", None)
    index = getattr(token, "start_index", -1)
    if token is not None and getattr(token, "source", source) not in ("", source):
        index = -1  # (a token of a snippet: the template's own position is unknown)
    line, column = _position(source, index if isinstance(index, int) else -1)
    return TemplateError(field, str(exc).splitlines()[0], line, column)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None
    preheader: str | None = None
    deep_link: str | None = None  # push
    image: str | None = None  # push


def _env(field: str, snippets: dict[str, str] | None = None) -> Environment:
    if not snippets:
        return _html if field == "html" else _plain
    return Environment(autoescape=field == "html", loader=DictLoader(snippets))


@lru_cache(maxsize=256)
def _parsed(field: str, source: str, snippets: tuple[tuple[str, str], ...]) -> BoundTemplate:
    """A field's parsed template, kept for later renders: parsing cost more than rendering, and a
    campaign renders the same few sources for every recipient (snippets are part of the key)."""
    return _env(field, dict(snippets)).from_string(source)


def validate(fields: dict[str, str | None], snippets: dict[str, str] | None = None,
             variables: tuple[str, ...] | None = None) -> None:
    """Parse every field and check that the filters and snippets (``snippets``: all the workspace has) it
    uses exist, through the snippets it includes, and (``variables``: the names a template sees) that it
    reads no other variable than those and its own (``assign``, ``for``); raise :class:`TemplateError` naming
    the first field that fails, with the line and column. (All parse; the first two would fail every render,
    the last would render nothing where ``{{ profle.first_name }}`` was meant.)"""
    for name, source in fields.items():
        if source is None:
            continue
        env = _env(name, snippets or {})
        try:
            template = env.from_string(source)
            try:
                analysis = template.analyze(include_partials=True)
            except TemplateNotFoundError as exc:
                if exc.args and exc.args[0]:
                    raise TemplateError(name, f"no snippet named {exc.args[0]!r}") from None
                analysis = template.analyze(include_partials=False)  # (a name computed when rendering)
        except LiquidError as exc:
            raise _syntax_error(name, source, exc) from None
        if unknown := sorted(set(analysis.filters) - set(env.filters)):
            span = analysis.filters[unknown[0]][0]
            raise TemplateError(name, f"unknown filter {unknown[0]!r}",
                                *(_position(source, span.index) if not span.template_name else (None, None)))
        if variables is None:
            continue
        for var, uses in analysis.globals.items():
            own = [u.span for u in uses if not u.span.template_name]  # (a snippet's may come from its caller)
            if var not in variables and own:
                raise TemplateError(name, f"unknown variable {var!r} (templates see {', '.join(variables)})",
                                    *_position(source, own[0].index))


def render(fields: dict[str, str | None], variables: dict[str, Any], snippets: dict[str, str] | None = None
           ) -> Rendered:
    out: dict[str, str | None] = {}
    for name, source in fields.items():
        if source is None:
            out[name] = None
            continue
        try:
            out[name] = _parsed(name, source, tuple(sorted((snippets or {}).items()))).render(**variables)
        except LiquidError as exc:
            raise TemplateError(name, str(exc).splitlines()[0]) from None
    html = out.get("html")
    preheader = _one_line(out.get("preheader")) or None
    if html and "<style" in html.lower():  # only documents with style rules need (and get) inlining
        try:
            html = _inliner.inline(html)
        except ValueError as exc:
            raise TemplateError("html", f"CSS could not be inlined: {exc}") from None
    text = out.get("text") or (html_to_text(html) if html else None)
    if html and preheader:  # the hidden first line mail clients preview after the subject
        html = _with_preheader(html, preheader)
    return Rendered(subject=_one_line(out.get("subject")), html=html, text=text, preheader=preheader,
                    deep_link=(out.get("deep_link") or "").strip() or None,
                    image=(out.get("image") or "").strip() or None)


def _one_line(value: str | None) -> str:
    """A subject or preheader is one line: a line break a trait brought in (``"Ada\\r\\nBcc: …"``) becomes a
    space, so the message goes out (delivery refuses a subject with CR or LF) and no header is injected."""
    return _LINE_BREAKS.sub(" ", value or "").strip()


def _with_preheader(html: str, preheader: str) -> str:
    span = (f'<div style="display:none;max-height:0;overflow:hidden;mso-hide:all" aria-hidden="true">'
            f'{escape(preheader)}</div>')
    body = re.search(r"<body[^>]*>", html, re.IGNORECASE)
    return html[:body.end()] + span + html[body.end():] if body else span + html


FIELDS = ("subject", "preheader", "html", "text", "deep_link", "image")


def locale_chain(locale: Any) -> list[str]:
    """``fr-CA`` → ``["fr-ca", "fr"]``; ``fr_CA`` and other spellings alike (the default comes after)."""
    if not isinstance(locale, str) or not locale.strip():
        return []
    parts = locale.strip().replace("_", "-").lower().split("-")
    return ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]


def for_locale(template: dict[str, Any], locale: Any) -> tuple[dict[str, str | None], str | None]:
    """The fields to render for a profile's locale, and which variant: each field from the first variant
    of the chain that has it (``fr-ca``, then ``fr``), else the default's. Variant keys are spelled like
    profile locales (``fr_CA`` = ``fr-ca``)."""
    variants = {chain[0]: v or {} for k, v in (template.get("locales") or {}).items() if (chain := locale_chain(k))}
    codes = [code for code in locale_chain(locale) if code in variants]
    fields = {f: next((variants[c][f] for c in codes if variants[c].get(f) is not None), template.get(f))
              for f in FIELDS}
    return fields, codes[0] if codes else None


def variables_for(profile: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any]:
    """What a template sees: ``profile`` (traits plus ids), ``traits`` and the trigger ``event``."""
    traits = dict(profile.get("traits") or {})
    return {
        "profile": {**traits, "id": profile.get("id"), "user_id": profile.get("user_id")},
        "traits": traits,
        "event": trigger,
    }
