"""Liquid templates: validation on save and rendering with a profile and its trigger (pure functions).

HTML bodies are rendered with auto-escaping (a trait such as a first name can never inject markup);
subjects and text bodies are plain text. Snippets (the workspace's shared partials) are available to
``{% render 'name' %}`` and ``{% include 'name' %}``. Rendered HTML gets its ``<style>`` rules inlined
for email clients (css-inline; those no style attribute can hold, such as ``@media`` and ``:hover``, stay in
the ``<style>`` block), and a plain-text part is generated from it when the template has none.

Two filters speak the recipient's time and language (the caller says which: ``zone``, ``locale``):
``date`` is Liquid's own, fed the time in the recipient's zone (:func:`in_zone`), and ``money`` formats an
amount in a currency by the locale's conventions (Babel's CLDR data): ``{{ 12.5 | money: 'EUR' }}`` is
``€12.50`` in ``en``, ``12,50 €`` in ``fr``.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, DecimalException, localcontext
from functools import lru_cache
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
from babel import Locale, UnknownLocaleError, numbers
from dateutil import parser as date_parser
from liquid import BoundTemplate, DictLoader, Environment, Markup, RenderContext, is_undefined
from liquid.builtin.expressions import FilteredExpression, StringLiteral, TernaryFilteredExpression
from liquid.builtin.expressions.filtered import Filter
from liquid.builtin.tags.include_tag import IncludeNode
from liquid.builtin.tags.render_tag import RenderNode
from liquid.exceptions import FilterArgumentError, LiquidError, TemplateNotFoundError
from liquid.filter import with_context

from shared.html_text import html_to_text

# What the formatting filters read from a render (set by :func:`render`, never by a template: neither name can
# be written in Liquid, and :func:`validate` refuses reading any variable a template is not given).
ZONE_VAR, LOCALE_VAR = "tenure:zone", "tenure:locale"
DEFAULT_LOCALE = Locale("en")
_UTC = ZoneInfo("UTC")


def in_zone(value: Any, zone: ZoneInfo) -> Any:
    """What ``date`` formats, as the recipient's clock shows it: ``'now'``/``'today'``, a date-time (an object,
    ISO 8601 or other text dateutil reads, as the built-in ``date`` does) or a Unix timestamp (a number, or
    digits) as a date-time in ``zone``. A time with an offset is that moment; one without (``2026-12-03
    18:00``) is taken as UTC. A date without a time of day (``2026-12-03``, ``3 Dec 2026``) is a calendar day,
    the same in every zone: kept as it is. Anything else (text that is no date, ``nil``) is left for the
    built-in filter, which shows text unchanged and nothing for an undefined value."""
    if isinstance(value, str) and value.strip().lower() in ("now", "today"):
        return datetime.now(UTC).astimezone(zone)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(zone)
    if isinstance(value, date):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, str) and value.isdigit():
        try:
            return datetime.fromtimestamp(float(value), UTC).astimezone(zone)
        except (OverflowError, OSError, ValueError):
            return value
    if isinstance(value, str):
        midnight = datetime.combine(date.today(), time())  # (missing parts come from today, as in the built-in)
        try:
            parsed = date_parser.parse(value, default=midnight)
            has_time = date_parser.parse(value, default=midnight.replace(hour=1)).hour == parsed.hour
        except (ValueError, OverflowError):
            return value
        if not has_time and parsed.tzinfo is None:
            return parsed
        return in_zone(parsed, zone)
    return value


def _zone(context: RenderContext) -> ZoneInfo:
    zone = context.resolve(ZONE_VAR, default=None)
    return zone if isinstance(zone, ZoneInfo) else _UTC


def babel_locale(locale: Any) -> Locale:
    """The CLDR locale of a profile's ``locale`` (``fr-CA``, ``fr_CA``, ``de``): the most specific one Babel
    knows (``fr_CA``, else ``fr``), else English."""
    return _cldr_locale(locale[:50]) if isinstance(locale, str) else DEFAULT_LOCALE


@lru_cache(maxsize=512)
def _cldr_locale(locale: str) -> Locale:  # (every send asks: Babel looks for a data file each time)
    parts = [p for p in locale.strip().replace("-", "_").split("_") if p]
    for n in range(len(parts), 0, -1):
        try:
            return Locale.parse("_".join(parts[:n]))
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return DEFAULT_LOCALE


def _amount(value: Any) -> Decimal:
    """A number, or text holding one written plainly (``12.5``, ``"-3.20"``): no grouping, no symbol, finite."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except DecimalException:
            raise FilterArgumentError(f"money: {value[:50]!r} is not a number", token=None) from None
    else:
        raise FilterArgumentError(f"money: expected a number, found {type(value).__name__}", token=None)
    if not number.is_finite():
        raise FilterArgumentError(f"money: {value!s:.50} is not an amount", token=None)
    return number


def currency_problem(code: Any) -> str | None:
    """Why ``code`` is no currency ``money`` can format (an ISO 4217 code CLDR knows: ``EUR``, ``usd``)."""
    if not isinstance(code, str) or not code.strip():
        return "a currency code is needed, e.g. money: 'EUR'"
    if not numbers.is_currency(code.strip().upper()):
        return f"{code[:20]!r} is not a currency code (ISO 4217, e.g. EUR, USD, JPY)"
    return None


@with_context
def money(value: Any, currency: Any = None, *, context: RenderContext) -> str:
    """``{{ 12.5 | money: 'EUR' }}``: the amount in the currency, as the recipient's locale writes it (its
    symbol, separators and the currency's usual decimals, rounded half up): ``€12.50`` in ``en``, ``12,50 €``
    in ``fr`` (CLDR's no-break space). Nothing for an undefined, nil or empty value (like ``date``); text that
    is no plain number, or an unknown currency, is an error of the render, as a filter's errors are."""
    if problem := currency_problem(currency):
        raise FilterArgumentError(f"money: {problem}", token=None)
    if is_undefined(value) or value is None or (isinstance(value, str) and not value.strip()):
        return ""
    locale = context.resolve(LOCALE_VAR, default=None)
    amount = _amount(value)
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 60, ROUND_HALF_UP
        try:
            return numbers.format_currency(amount, currency.strip().upper(),
                                           locale=locale if isinstance(locale, Locale) else DEFAULT_LOCALE)
        except (DecimalException, ValueError, OverflowError):
            raise FilterArgumentError(f"money: {value!s:.50} is out of range", token=None) from None


class _Environment(Environment):
    """Liquid with ``date`` in the recipient's zone and ``money`` in their locale (see the module)."""

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        builtin_date = self.filters["date"]

        @with_context
        def local_date(value: Any, fmt: Any, *, context: RenderContext) -> str:
            moment = in_zone(value, _zone(context))
            if not (isinstance(moment, datetime) and moment.tzinfo and isinstance(fmt, str)):
                return builtin_date(moment, fmt, environment=context.env)  # type: ignore[no-any-return]
            # a moment is formatted here: the built-in caches what it parses by value, and the same instant in
            # two zones is one value (18:00 UTC == 19:00 CET): a second recipient would get the first one's clock
            try:
                out = moment.strftime(fmt)
            except ValueError as exc:
                raise FilterArgumentError(f"date: {exc}", token=None) from None
            return Markup(out) if context.env.autoescape and isinstance(fmt, Markup) else out

        self.add_filter("date", local_date)
        self.add_filter("money", money)


_html = _Environment(autoescape=True)
_plain = _Environment(autoescape=False)
# Rules that cannot go into a style attribute (``@media``, ``:hover``, ``@font-face``: responsive and dark-mode
# templates) stay in their ``<style>`` block; only the inlined ones leave it (an emptied block is dropped).
_inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=True, remove_inlined_selectors=True)
_EMPTY_STYLE = re.compile(r"<style\b[^>]*>\s*</style>", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")  # what str.splitlines() breaks on


class TemplateError(ValueError):
    def __init__(self, field: str, message: str, line: int | None = None, column: int | None = None):
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{field}: {message}{where}")
        self.field = field
        self.message = message + where
        self.line, self.column = line, column


# what a template sees: the profile and its trigger, the programs' referral and loyalty, segment's computed attributes
VARIABLES = ("profile", "traits", "event", "referral", "loyalty", "attributes")
ATTRIBUTES = "attributes"  # asked of segment only for templates that read them (:func:`reads`)


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
    return _Environment(autoescape=field == "html", loader=DictLoader(snippets))


@lru_cache(maxsize=256)
def _parsed(field: str, source: str, snippets: tuple[tuple[str, str], ...]) -> BoundTemplate:
    """A field's parsed template, kept for later renders: parsing cost more than rendering, and a
    campaign renders the same few sources for every recipient (snippets are part of the key)."""
    return _env(field, dict(snippets)).from_string(source)


def validate(fields: dict[str, str | None], snippets: dict[str, str] | None = None,
             variables: tuple[str, ...] | None = None) -> None:
    """Parse every field and check that the filters and snippets (``snippets``: all the workspace has) it
    uses exist, through the snippets it includes, and (``variables``: the names a template sees) that it
    reads no other variable than those and its own (``assign``, ``for``), and that each ``money`` it writes
    names a currency it knows (when the code is written out: ``money: 'EUT'``); raise :class:`TemplateError`
    naming the first field that fails, with the line and column. (All parse; the filters, snippets and
    currencies would fail every render, an unknown variable would render nothing where
    ``{{ profle.first_name }}`` was meant.)"""
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
        if snippets and (loop := render_loop(template, snippets)):
            cycle, index = loop
            raise TemplateError(name, f"snippets render each other in a loop: {' → '.join(map(repr, cycle))} (a "
                                      "render would never end)", *_position(source, index))
        if unknown := sorted(set(analysis.filters) - set(env.filters)):
            span = analysis.filters[unknown[0]][0]
            raise TemplateError(name, f"unknown filter {unknown[0]!r}",
                                *(_position(source, span.index) if not span.template_name else (None, None)))
        for f in _filters(template):
            if f.name == "money" and (problem := _money_literal_problem(f)):
                raise TemplateError(name, f"money: {problem}", *_position(source, f.token.start_index))
        if variables is None:
            continue
        for var, uses in analysis.globals.items():
            own = [u.span for u in uses if not u.span.template_name]  # (a snippet's may come from its caller)
            if var not in variables and own:
                raise TemplateError(name, f"unknown variable {var!r} (templates see {', '.join(variables)})",
                                    *_position(source, own[0].index))


def reads(template: dict[str, Any], variable: str, snippets: dict[str, str] | None = None) -> bool:
    """Whether a template (any field, any locale variant, or a snippet it renders or includes) reads ``variable``:
    a variable that costs a request to compute (``attributes``) is computed only for the templates that show it.
    When it cannot tell (a field that does not parse; a snippet named when rendering, and some snippet mentions
    the variable) it says yes: a wasted request, never a message rendered without the values."""
    sources = [(f, template.get(f)) for f in FIELDS]
    sources += [(f, v.get(f)) for v in (template.get("locales") or {}).values() if isinstance(v, dict) for f in FIELDS]
    return _reads(tuple((f, src) for f, src in sources if isinstance(src, str) and src), variable,
                  tuple(sorted((snippets or {}).items())))


@lru_cache(maxsize=256)
def _reads(sources: tuple[tuple[str, str], ...], variable: str, snippets: tuple[tuple[str, str], ...]) -> bool:
    in_snippets = any(variable in content for _, content in snippets)
    if not in_snippets and not any(variable in src for _, src in sources):
        return False  # (most templates: not even the word)
    for field, source in sources:
        try:
            template = _parsed(field, source, snippets)
            if variable in template.analyze(include_partials=True).globals:
                return True
        except LiquidError:
            return True
        if in_snippets and _names_partials_when_rendering(template):
            return True
    return False


def _names_partials_when_rendering(template: BoundTemplate) -> bool:
    """Whether a template renders or includes a snippet whose name is computed (``{% render name %}``): the
    analysis cannot follow it."""
    static = RenderContext(template)
    todo = list(template.nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (RenderNode, IncludeNode)) and not isinstance(node.name, StringLiteral):
            return True
        todo.extend(node.children(static, include_partials=False))
    return False


def _partials(template: BoundTemplate) -> list[tuple[str, int]]:
    """The snippets a template renders or includes by a name written out, each with where (its offset)."""
    static = RenderContext(template)
    out: list[tuple[str, int]] = []
    todo = list(template.nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (RenderNode, IncludeNode)) and isinstance(node.name, StringLiteral):
            out.append((node.name.value, node.token.start_index))
        todo.extend(node.children(static, include_partials=False))
    return sorted(out, key=lambda p: p[1])


def render_loop(template: BoundTemplate, snippets: dict[str, str]) -> tuple[list[str], int] | None:
    """A loop of snippets rendering (or including) each other that a render of ``template`` enters, as the names
    around it (``['a', 'b', 'a']``) and the offset in ``template`` of the render leading there; None if there is
    none. Liquid gives up on such a render only at its depth limit ("maximum context depth reached"): every
    preview and send of the template failed. (A snippet named when rendering is not followed.)"""
    seen: set[str] = set()  # snippets explored to the end without a loop

    def walk(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name):], name]
        if name in seen or name not in snippets:
            return None
        try:
            inner = _parsed("text", snippets[name], ())
        except LiquidError:
            return None  # (its own check says what is wrong with it)
        for child, _ in _partials(inner):
            if found := walk(child, [*path, name]):
                return found
        seen.add(name)
        return None

    for name, index in _partials(template):
        if cycle := walk(name, []):
            return cycle, index
    return None


def _filters(template: BoundTemplate) -> Iterator[Filter]:
    """The filters a template applies, in its own source (not in the snippets it renders)."""
    static = RenderContext(template)

    def of(expression: Any) -> Iterator[Filter]:
        if isinstance(expression, TernaryFilteredExpression):
            yield from [*(expression.filters or []), *(expression.tail_filters or [])]
        elif isinstance(expression, FilteredExpression):
            yield from expression.filters or []
        for child in expression.children():
            yield from of(child)

    todo = list(template.nodes)
    while todo:
        node = todo.pop()
        for expression in node.expressions():
            yield from of(expression)
        todo.extend(node.children(static, include_partials=False))


def _money_literal_problem(f: Filter) -> str | None:
    """What is wrong with a ``money`` filter's currency as written: none given, or a literal code that is none
    (one read from a variable is judged when rendering)."""
    positional = [a for a in f.args if not getattr(a, "name", None)]
    if not positional:
        return currency_problem(None)
    code = getattr(positional[0], "value", None)
    return currency_problem(code.value) if isinstance(code, StringLiteral) else None


def render(fields: dict[str, str | None], variables: dict[str, Any], snippets: dict[str, str] | None = None,
           *, zone: ZoneInfo | None = None, locale: Any = None) -> Rendered:
    """Render each field with ``variables`` (:func:`variables_for`); ``date`` shows times in ``zone`` (the
    recipient's: ``timing.zone``; UTC if none) and ``money`` writes amounts as ``locale`` does (the locale the
    recipient's variant is chosen for, e.g. ``fr-CA``; English if none or unknown)."""
    out: dict[str, str | None] = {}
    given = {**variables, ZONE_VAR: zone or _UTC, LOCALE_VAR: babel_locale(locale)}
    for name, source in fields.items():
        if source is None:
            out[name] = None
            continue
        try:
            out[name] = _parsed(name, source, tuple(sorted((snippets or {}).items()))).render(given)
        except LiquidError as exc:
            raise TemplateError(name, str(exc).splitlines()[0]) from None
    html = out.get("html")
    preheader = _one_line(out.get("preheader")) or None
    if html and "<style" in html.lower():  # only documents with style rules need (and get) inlining
        try:
            html = _EMPTY_STYLE.sub("", _inliner.inline(html))
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


BODY = ("html", "text")  # an email's two parts: from one language (a push or an SMS has `text` alone)


def for_locale(template: dict[str, Any], locale: Any) -> tuple[dict[str, str | None], str | None]:
    """The fields to render for a profile's locale, and which variant: each field from the first variant
    of the chain that has it (``fr-ca``, then ``fr``), else the default's — but the body (HTML and text) as a
    whole, from the first of them that has either part, so an email never mixes two languages (a French HTML
    part with the default's English text): a missing text part is then made from that HTML at render, and a
    variant with text only makes a text-only email. Variant keys are spelled like profile locales
    (``fr_CA`` = ``fr-ca``)."""
    variants, codes = _chain_of_variants(template, locale)
    fields = {f: next((variants[c][f] for c in codes if variants[c].get(f) is not None), template.get(f))
              for f in FIELDS if f not in BODY}
    body = variants[code] if (code := _body_variant(variants, codes)) else template
    fields.update({f: body.get(f) for f in BODY})
    return fields, codes[0] if codes else None


def body_locale(template: dict[str, Any], locale: Any) -> str | None:
    """The variant the body comes from for a profile's locale (``fr-ca``, ``fr``; None: the default's), as
    :func:`for_locale` picks it: the message's language, which delivery's footer and pages must speak too."""
    return _body_variant(*_chain_of_variants(template, locale))


def _chain_of_variants(template: dict[str, Any], locale: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The template's variants by normalised key, and the codes of ``locale``'s chain it has, most specific first."""
    variants = {chain[0]: v or {} for k, v in (template.get("locales") or {}).items() if (chain := locale_chain(k))}
    return variants, [code for code in locale_chain(locale) if code in variants]


def _body_variant(variants: dict[str, dict[str, Any]], codes: list[str]) -> str | None:
    return next((c for c in codes if any(variants[c].get(f) is not None for f in BODY)), None)


def variables_for(profile: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any]:
    """What a template sees of the profile and the trigger: ``profile`` (traits plus ids), ``traits`` and the
    trigger ``event`` (the callers add ``referral``, ``loyalty`` and ``attributes`` for templates that read them)."""
    traits = dict(profile.get("traits") or {})
    return {
        "profile": {**traits, "id": profile.get("id"), "user_id": profile.get("user_id")},
        "traits": traits,
        "event": trigger,
    }
