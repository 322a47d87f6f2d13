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
from html.parser import HTMLParser
from typing import Any

import css_inline
from liquid import BoundTemplate, DictLoader, Environment
from liquid.exceptions import LiquidError, TemplateNotFoundError

_html = Environment(autoescape=True)
_plain = Environment(autoescape=False)
_inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)


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


def validate(fields: dict[str, str | None], snippets: dict[str, str] | None = None) -> None:
    """Parse every field and check that the filters and snippets (``snippets``: all the workspace has) it
    uses exist, through the snippets it includes; raise :class:`TemplateError` naming the first field that
    fails. (Both parse, and would fail every render.)"""
    for name, source in fields.items():
        if source is None:
            continue
        env = _env(name, snippets or {})
        try:
            template = env.from_string(source)
            try:
                used = template.analyze(include_partials=True).filters
            except TemplateNotFoundError as exc:
                if exc.args and exc.args[0]:
                    raise TemplateError(name, f"no snippet named {exc.args[0]!r}") from None
                used = template.analyze(include_partials=False).filters  # (a name computed when rendering)
        except LiquidError as exc:
            raise TemplateError(name, str(exc).splitlines()[0]) from None
        if unknown := sorted(set(used) - set(env.filters)):
            raise TemplateError(name, f"unknown filter {unknown[0]!r}")


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
    preheader = (out.get("preheader") or "").strip() or None
    if html and "<style" in html.lower():  # only documents with style rules need (and get) inlining
        try:
            html = _inliner.inline(html)
        except ValueError as exc:
            raise TemplateError("html", f"CSS could not be inlined: {exc}") from None
    text = out.get("text") or (html_to_text(html) if html else None)
    if html and preheader:  # the hidden first line mail clients preview after the subject
        html = _with_preheader(html, preheader)
    return Rendered(subject=(out.get("subject") or "").strip(), html=html, text=text, preheader=preheader,
                    deep_link=(out.get("deep_link") or "").strip() or None,
                    image=(out.get("image") or "").strip() or None)


def _with_preheader(html: str, preheader: str) -> str:
    span = (f'<div style="display:none;max-height:0;overflow:hidden;mso-hide:all" aria-hidden="true">'
            f'{escape(preheader)}</div>')
    body = re.search(r"<body[^>]*>", html, re.IGNORECASE)
    return html[:body.end()] + span + html[body.end():] if body else span + html


class _TextParser(HTMLParser):
    _BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag == "a":
            self._href.append(dict(attrs).get("href"))
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and not href.startswith(("#", "mailto:")):
                self.parts.append(f" ({href})")
        elif tag in self._BLOCKS and tag != "li":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text part: block elements become line breaks, links keep their address."""
    parser = _TextParser()
    parser.feed(html)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


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
