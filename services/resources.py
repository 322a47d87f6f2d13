"""Campaigns as code: ``tenure apply -f file.yaml`` and ``tenure get campaigns -o yaml``.

A file holds ``programs`` (the referral and loyalty programs, named ``referral`` and ``loyalty``),
``snippets`` (the Liquid partials templates ``render``), ``templates``, ``segments`` and ``campaigns`` of one
workspace, each identified by name;
campaign steps name their template (``template: welcome``) and triggers and conditions name their
segment (``segment: engaged pros``) instead of ids. ``plan`` compares the file with what the services
hold — after normalising both the way the services store them, so applying the same file twice
changes nothing and makes no new campaign version — and ``apply`` carries out the plan through the
public HTTP APIs (programs, snippets, templates and segments first: templates render snippets, campaigns
refer to the rest). Every check the services make on save that needs no database (a template's Liquid, its
variables and the snippets it renders, a journey's graph) is made by ``plan`` first, with the functions the
services use, so a file one of them would refuse is refused before anything is written; if a write is still
refused (a check only the service can make), the error says which items were applied and which were not.
"""

import difflib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import yaml
from pydantic import ValidationError

from services.answers import UnreadableAnswer, json_of, problem_text
from services.campaign import campaigns, journeys, schemas, templates
from services.campaign.programs import config as program_config
from services.segment import segments as segment_checks
from shared.errors import AppError
from shared.validation import errors_text, unstorable

KINDS = ("programs", "snippets", "templates", "segments", "campaigns")
_TEMPLATE_FIELDS = ("channel", "subject", "preheader", "html", "text", "deep_link", "image", "locales")
_CAMPAIGN_KEYS = ("trigger", "steps", "entry", "goal", "exit_on", "exit_on_leaving", "exit_on_entering",
                  "message_type", "topic")
# the keys an item of each kind may have: another is a typo the service would refuse (a 422), and left out here it
# changed what was applied (`goals:` saved a campaign without its goal, `stauts: paused` one that went live)
ITEM_KEYS: dict[str, tuple[str, ...]] = {
    "programs": ("name", "enabled", "config"),
    "snippets": ("name", "content"),
    "templates": ("name", *_TEMPLATE_FIELDS),
    "segments": ("name", "definition"),
    "campaigns": ("name", "status", *_CAMPAIGN_KEYS),
}


class ResourceError(ValueError):
    pass


class PartlyApplied(ResourceError):
    """A write of ``apply`` failed after others were made: which items of the plan were applied, the one that
    failed (``failed``, and ``state``: "not applied", "partly applied" when some of its calls were made, or
    "perhaps applied" when a call got no answer) and which were not attempted."""

    def __init__(self, cause: str, applied: list["Change"], failed: "Change", state: str,
                 not_applied: list["Change"]):
        self.cause, self.applied, self.failed, self.state, self.not_applied = (cause, applied, failed, state,
                                                                               not_applied)
        lines = [cause, "applied: " + (", ".join(_item(c) for c in applied) or "nothing"),
                 f"{state}: {_item(failed)}"]
        if not_applied:
            lines.append("not applied: " + ", ".join(_item(c) for c in not_applied))
        lines.append("(fix the file and apply it again: what was applied shows as unchanged)")
        super().__init__("\n".join(lines))


def _item(c: "Change") -> str:
    return f"{c.action} {c.kind[:-1]} {c.name!r}"


_PLACEHOLDER = uuid.UUID("0f0c2a9e-55b3-4c59-9d4e-2f1b8a7c6d10")


def placeholder(kind: str, name: str) -> str:
    """A stand-in id for a resource the plan will create (replaced by its real id when applying)."""
    return str(uuid.uuid5(_PLACEHOLDER, f"{kind}:{name}"))


@dataclass
class Change:
    kind: str  # programs | snippets | templates | segments | campaigns
    name: str
    action: str  # create | update | unchanged
    body: dict[str, Any]
    current: dict[str, Any] | None = None
    diff: str = ""


@dataclass
class Api:
    """The services' HTTP APIs with a workspace's secret key (``writes``: how many writes they took so far)."""

    http: httpx.AsyncClient
    urls: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    writes: int = 0

    async def call(self, method: str, service: str, path: str, **kw: Any) -> Any:
        resp = await self.http.request(method, self.urls[service] + path, headers=self.headers, **kw)
        if resp.status_code >= 400:
            raise ResourceError(f"{method} {service}{path}: {problem_text(resp)}")
        self.writes += method != "GET"
        return _json(resp)

    async def maybe(self, service: str, path: str) -> Any:
        """A GET that may find nothing (None on 404)."""
        resp = await self.http.request("GET", self.urls[service] + path, headers=self.headers)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise ResourceError(f"GET {service}{path}: {problem_text(resp)}")
        return _json(resp)

    async def all(self, service: str, path: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await self.call("GET", service, path, params={"limit": 1000, **({"after": after} if after else {})})
            items += page[key]
            after = page.get("next_cursor")
            if not after:
                return items


def _json(resp: httpx.Response) -> Any:
    try:
        return json_of(resp)
    except UnreadableAnswer as exc:
        raise ResourceError(str(exc)) from None


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans, which would turn
    a branch's ``yes:`` and ``no:`` into True and False. Nor are base-60 numbers read: ``time: 10:30`` was the
    integer 630 (and ``09:30``, not base 60, a text). A key given twice in a mapping is an error, not the last
    one silently winning (a campaign's second ``steps:`` replaced its first)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # (``<<: *defaults`` then a key of one's own overrides, as meant)
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping", node.start_mark, f"found the key {key!r} twice",
                            key_node.start_mark)
                    seen.add(key)
                except TypeError:  # an unhashable key: the constructor says so below
                    break
        return super().construct_mapping(node, deep)  # type: ignore[arg-type]


def _resolver(tag: str, regexp: re.Pattern[str]) -> re.Pattern[str]:
    if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):  # YAML 1.1's base 60: anything with a ":"
        return re.compile("(?!.*:)" + regexp.pattern, regexp.flags)
    return regexp


_Loader.yaml_implicit_resolvers = {
    first: [(tag, _resolver(tag, regexp)) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load(text: str) -> dict[str, list[dict[str, Any]]]:
    try:
        data = yaml.load(text, Loader=_Loader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ResourceError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) - set(KINDS):
        unknown = sorted(map(str, set(data) - set(KINDS))) if isinstance(data, dict) else []
        raise ResourceError(f"expected a mapping with {', '.join(KINDS)}"
                            + (f", not {', '.join(map(repr, unknown))}" if unknown else ""))
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        items = data.get(kind) or []
        _check_storable(kind, items)
        names = [i.get("name") for i in items if isinstance(i, dict)]
        if len(names) != len(items) or not all(isinstance(n, str) and n for n in names):
            raise ResourceError(f"every item of {kind} needs a name")
        if len(set(names)) != len(names):
            raise ResourceError(f"{kind}: names must be unique")
        for item in items:
            if unknown := [k for k in item if k not in ITEM_KEYS[kind]]:
                raise ResourceError(f"{kind[:-1]} {item['name']!r}: unknown key {str(unknown[0])!r} (a {kind[:-1]} "
                                    f"has {', '.join(ITEM_KEYS[kind])}); nothing was applied")
        out[kind] = items
    if unknown := {p["name"] for p in out["programs"]} - set(program_config.KINDS):
        raise ResourceError(f"programs are named {' or '.join(program_config.KINDS)}, not {', '.join(sorted(unknown))}")
    return out


def _check_storable(kind: str, items: Any) -> None:
    """Refuse the file, before anything is planned or applied, when an item holds what PostgreSQL cannot store:
    a NUL (YAML's ``"\\0"``) or a lone surrogate (``"\\ud800"``); the services would refuse it (422) only once
    the items before it were applied."""
    for i, item in enumerate(items if isinstance(items, list) else []):
        if (problem := unstorable(item)) is not None:
            name = item.get("name") if isinstance(item, dict) else None
            which = repr(name) if isinstance(name, str) else f"#{i + 1}"  # (repr escapes a NUL or a surrogate)
            raise ResourceError(f"{kind[:-1]} {which}: {problem}")


def _program_body(item: dict[str, Any]) -> dict[str, Any]:
    model = program_config.MODELS[item["name"]]
    try:
        cfg = model.model_validate(item.get("config") or {}).model_dump(mode="json")
    except ValidationError as exc:
        raise ResourceError(f"program {item['name']!r}: {errors_text(exc, item.get('config') or {})}") from None
    return {"enabled": bool(item.get("enabled", True)), "config": cfg}


_DATA_KEYS = ("traits", "value")  # what these hold is the user's data (an update_attribute step's traits, a
# filter's or comparison's value), never a reference: a trait named ``segment`` is a trait, not a segment's name


def _swap(node: Any, mapping: dict[str, dict[str, str]], to_ids: bool, where: str = "") -> Any:
    """Replace ``template``/``segment`` names with ``template_id``/``segment_id`` (or back). ``where``: the item
    (``campaign 'Welcome'``), which an unknown name's error names with its place."""
    return _swapped(node, mapping, to_ids, where, ())


def _swapped(node: Any, mapping: dict[str, dict[str, str]], to_ids: bool, where: str, at: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_swapped(n, mapping, to_ids, where, (*at, str(i))) for i, n in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in _DATA_KEYS:
            out[k] = v
        elif to_ids and k in ("template", "segment") and isinstance(v, str):
            if v not in mapping[k]:
                place = ".".join((*at, k))
                raise ResourceError((f"{where}: " if where else "")
                                    + f"{place}: no {k} named {v!r} (in the file or the workspace)")
            out[f"{k}_id"] = mapping[k][v]
        elif not to_ids and k in ("template_id", "segment_id") and str(v) in mapping[k[:-3]]:
            out[k[:-3]] = mapping[k[:-3]][str(v)]
        else:
            out[k] = _swapped(v, mapping, to_ids, where, (*at, str(k)))
    return out


def _lists_used(node: Any, at: tuple[str, ...]) -> list[tuple[str, str]]:
    """The manual lists a segment definition names: (place, list id)."""
    if isinstance(node, list):
        return [u for i, n in enumerate(node) for u in _lists_used(n, (*at, str(i)))]
    if not isinstance(node, dict):
        return []
    here = [(".".join((*at, "list_id")), str(node["list_id"]))] if node.get("type") == "list" else []
    return here + [u for k, v in node.items() for u in _lists_used(v, (*at, str(k)))]


def _template_body(item: dict[str, Any]) -> dict[str, Any]:
    """A template as the file says it and the API takes it: empty fields and the default channel (email) left
    out, so a file and the stored template compare equal when they mean the same."""
    body = {k: item[k] for k in ("name", *_TEMPLATE_FIELDS) if item.get(k) not in (None, "", {})
            and not (k in _BODY_PARTS and _blank(item[k]))}
    if body.get("channel") == "email":
        del body["channel"]
    body["locales"] = {code: {k: v for k, v in variant.items() if v is not None
                              and not (k in _BODY_PARTS and _blank(v))}
                       for code, variant in (item.get("locales") or {}).items()}
    return body


_BODY_PARTS = ("html", "text")


def _blank(value: Any) -> bool:
    """A part the service stores as none (``schemas.body_part``)."""
    return isinstance(value, str) and schemas.body_part(value) is None


def _campaign_definition(item: dict[str, Any]) -> dict[str, Any]:
    definition = {k: item[k] for k in _CAMPAIGN_KEYS if item.get(k) is not None}
    try:
        return journeys.parse_new(definition).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise ResourceError(f"campaign {item.get('name')!r}: {errors_text(exc, definition)}") from None


def _refused(what: str, exc: AppError) -> ResourceError:
    """A service's own check, made here, refusing an item: its detail and each field error, as the service's
    422 would say them (``answers.problem_text``)."""
    errors = [e for e in exc.extra.get("errors") or [] if isinstance(e, dict)]
    return ResourceError("\n".join([f"{what}: {exc.detail}", *(f"  {_where(e)}: {e.get('msg')}" for e in errors)]))


def _where(error: dict[str, Any]) -> str:
    """An error's place, dotted: its ``at``, else its ``loc`` without the part of the request."""
    return str(error.get("at") or ".".join(str(p) for p in (error.get("loc") or [])[1:]))


def _check_snippet(name: str, content: str, snippets: dict[str, str]) -> None:
    """What campaign checks when the snippet is put (``campaigns.put_snippet``), against ``snippets``: the ones
    the workspace will have by then."""
    try:
        templates.validate({"text": content}, {**snippets, name: content})
    except templates.TemplateError as exc:
        raise ResourceError(f"snippet {name!r}: does not parse: {exc.message}") from None


def _check_template(name: str, body: dict[str, Any], snippets: dict[str, str]) -> None:
    """What campaign checks when the template is saved (the request body, then
    ``campaigns.checked_template_fields``: its Liquid, the variables it reads, the snippets it renders), against
    ``snippets``: the workspace's once the file's are applied."""
    try:
        data = schemas.TemplateCreate.model_validate(body).model_dump(exclude_none=True)
        campaigns.checked_template_fields(data, snippets)
    except ValidationError as exc:
        raise ResourceError(f"template {name!r}: {errors_text(exc, body)}") from None
    except AppError as exc:
        raise _refused(f"template {name!r}", exc) from None


def _check_campaign(name: str, definition: dict[str, Any]) -> None:
    """What campaign checks of a journey on save that needs no database (``campaigns.journey_from``: a loop that
    never waits, a step nothing leads to, a duration past a year, split weights that overflow …); the templates
    and segments it names are the plan's own or the workspace's (``_swap``)."""
    try:
        data = schemas.CampaignCreate.model_validate({"name": name, **definition}).model_dump(mode="json")
        campaigns.journey_from(data)
    except ValidationError as exc:
        raise ResourceError(f"campaign {name!r}: {errors_text(exc, definition)}") from None
    except AppError as exc:
        raise _refused(f"campaign {name!r}", exc) from None


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, allow_unicode=True)


def _diff(kind: str, name: str, current: Any, desired: Any) -> str:
    lines = difflib.unified_diff(_yaml(current).splitlines(), _yaml(desired).splitlines(),
                                 f"{kind}/{name} (now)", f"{kind}/{name} (file)", lineterm="")
    return "\n".join(lines)


async def plan(api: Api, desired: dict[str, list[dict[str, Any]]]) -> list[Change]:
    current = {
        "templates": {t["name"]: t for t in await api.all("campaign", "/v1/templates", "templates")},
        "segments": {s["name"]: s for s in await api.all("segment", "/v1/segments", "segments")},
        "campaigns": {c["name"]: c for c in await api.all("campaign", "/v1/campaigns", "campaigns")},
    }
    names = {
        "template": {**{n: t["id"] for n, t in current["templates"].items()}, **{
            t["name"]: placeholder("template", t["name"]) for t in desired["templates"]
            if t["name"] not in current["templates"]}},
        "segment": {**{n: s["id"] for n, s in current["segments"].items()}, **{
            s["name"]: placeholder("segment", s["name"]) for s in desired["segments"]
            if s["name"] not in current["segments"]}},
    }
    back = {kind: {v: k for k, v in m.items()} for kind, m in names.items()}  # ids -> names, for the diffs
    stages = await _stage_ids(api)
    changes: list[Change] = []
    for item in desired["programs"]:
        now_program = await api.maybe("campaign", f"/v1/programs/{item['name']}")
        now_body = {"enabled": now_program["enabled"], "config": now_program["config"]} if now_program else None
        changes.append(_change("programs", item["name"], _program_body(item), now_program, now_body, back))
    snippets = {s["name"]: s for s in await api.all("campaign", "/v1/snippets", "snippets")}
    contents = {name: s["content"] for name, s in snippets.items()}  # the workspace's as the apply goes on
    for item in desired["snippets"]:
        if not isinstance(item.get("content"), str):
            raise ResourceError(f"snippet {item['name']!r}: content is the snippet's Liquid text")
        now = snippets.get(item["name"])
        changes.append(change := _change("snippets", item["name"], {"content": item["content"]}, now,
                                         {"content": now["content"]} if now else None, back))
        if change.action != "unchanged":  # (put in file order: it may render those before it)
            _check_snippet(item["name"], item["content"], contents)
        contents[item["name"]] = item["content"]
    for item in desired["templates"]:
        body = _template_body(item)
        now = current["templates"].get(item["name"])
        now_body = _template_body(now) if now else None
        changes.append(change := _change("templates", item["name"], body, now, now_body, back))
        if change.action != "unchanged":  # (stored ones are not re-judged, as the service does not)
            _check_template(item["name"], body, contents)
    segment_changes = []
    lists: set[str] | None = None  # the workspace's list ids, read when a segment uses one
    for item in desired["segments"]:
        try:  # (what segment checks on save but the segments and lists it names: its own check)
            parsed = segment_checks.validate_definition(
                _swap({"definition": item.get("definition")}, names, True, f"segment {item['name']!r}")["definition"])
        except AppError as exc:
            raise _refused(f"segment {item['name']!r}", exc) from None
        body = {"name": item["name"], "definition": parsed.model_dump(mode="json")}
        if used := _lists_used(body["definition"], ("definition",)):
            lists = lists if lists is not None else {x["id"] for x in await api.all("segment", "/v1/lists", "lists")}
            for at, list_id in used:
                if list_id not in lists:  # (segment refuses it on save: found here, before anything is written)
                    raise ResourceError(f"segment {item['name']!r}: {at}: no list {list_id} in this workspace (a "
                                        "list's members are data, which tenure get does not export: create the list "
                                        "here, upload its members and put its id)")
        now = current["segments"].get(item["name"])
        segment_changes.append(_change("segments", item["name"], body, now,
                                       {"name": now["name"], "definition": now["definition"]} if now else None, back))
    changes += _readers_after_read(segment_changes)
    for item in desired["campaigns"]:
        body = {"name": item["name"], "definition": _swap(item, names, True, f"campaign {item['name']!r}"),
                "status": item.get("status", "active")}
        if body["status"] not in ("active", "paused", "archived"):
            raise ResourceError(f"campaign {item['name']!r}: status is active, paused or archived, not "
                                f"{body['status']!r}")
        body["definition"] = _by_stage(_campaign_definition(body["definition"]), stages)
        now = current["campaigns"].get(item["name"])
        if now is None or (now["definition"].get("trigger") or {}).get("at") != body["definition"]["trigger"].get(
                "at"):  # (a stored `at` is not re-judged, as campaign does not)
            _at_to_come(item["name"], body["definition"])
        if now:  # (compared, and edited, as a definition naming stages by name)
            now = {**now, "definition": _by_stage(now["definition"], stages)}
        now_body = {"name": now["name"], "definition": now["definition"], "status": now["status"]} if now else None
        changes.append(change := _change("campaigns", item["name"], body, now, now_body, back))
        if change.action != "unchanged":
            _check_campaign(item["name"], body["definition"])
        if change.action == "update" and now and now["status"] == "archived":
            raise ResourceError(f"campaign {item['name']!r} is archived: an archived campaign is not edited or "
                                "resumed (give it a new name for a new campaign)")
    return changes


def _passed_at(definition: dict[str, Any]) -> str | None:
    """A one-off broadcast's ``at`` when it has passed (as campaign judges it, a minute of leeway), else None."""
    trigger = definition.get("trigger") or {}
    at = trigger.get("at") if trigger.get("type") == "schedule" else None
    if isinstance(at, str) and datetime.fromisoformat(at) < datetime.now(UTC) - timedelta(minutes=1):
        return at
    return None


def _at_to_come(name: str, definition: dict[str, Any]) -> None:
    """A campaign the plan creates, or whose one-off time it changes, cannot be a one-off broadcast whose time has
    passed (campaign refuses it): say so before anything is applied. (An export leaves such broadcasts out, so it
    applies to another workspace: see :func:`export`.)"""
    if at := _passed_at(definition):
        raise ResourceError(f"campaign {name!r}: its one-off time (trigger.at {at}) has passed; a one-off "
                            "campaign needs a time to come: move `at`, or leave the campaign out of the file")


def _readers_after_read(changes: list[Change]) -> list[Change]:
    """The segment changes in file order, except that one reading a segment the plan creates comes after that
    creation: a file may define ``vip`` after ``vip buyers``, which reads it, and segment would otherwise be asked
    about an id that does not exist yet (a placeholder, named in its 422). A cycle is left as it is (segment
    refuses it, naming the node)."""
    created = {placeholder("segment", c.name): c for c in changes if c.action == "create"}
    ordered: list[Change] = []
    placed: set[str] = set()

    def place(c: Change, path: set[str]) -> None:
        if c.name in placed or c.name in path:
            return
        for ref in sorted(_texts(c.body) & created.keys()):
            place(created[ref], path | {c.name})
        placed.add(c.name)
        ordered.append(c)

    for c in changes:
        place(c, set())
    return ordered


def _texts(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_texts(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_texts(v) for v in node)) if node else set()
    return {node} if isinstance(node, str) else set()


async def _stage_ids(api: Api) -> dict[str, str]:
    """The workspace's lifecycle stages by their segment ids (GET /v1/lifecycle)."""
    return {s["segment_id"]: s["stage"] for s in (await api.call("GET", "segment", "/v1/lifecycle"))["stages"]}


def _by_stage(definition: dict[str, Any], stages: dict[str, str]) -> dict[str, Any]:
    """A segment trigger or ``exit_on_leaving`` entry naming a lifecycle stage by its segment id names it by the
    stage instead: the ids differ from workspace to workspace, so an export naming them could not be applied to
    another one (``no segment … in this workspace``), and the two spellings of the same stage compare equal."""
    out = dict(definition)
    trigger = out.get("trigger")
    if isinstance(trigger, dict) and trigger.get("type") in ("segment_entered", "segment_exited") and \
            str(trigger.get("segment_id")) in stages:
        out["trigger"] = {**{k: v for k, v in trigger.items() if k != "segment_id"},
                          "stage": stages[str(trigger["segment_id"])]}
    for rule in ("exit_on_leaving", "exit_on_entering"):
        if isinstance(out.get(rule), list):
            out[rule] = [{"stage": stages[str(ref["segment_id"])]} if isinstance(ref, dict) and str(
                ref.get("segment_id")) in stages else ref for ref in out[rule]]
    return out


def _change(kind: str, name: str, body: dict[str, Any], current: dict[str, Any] | None,
            current_body: dict[str, Any] | None, back: dict[str, dict[str, str]]) -> Change:
    if current is None:
        return Change(kind, name, "create", body, diff=_diff(kind, name, {}, _swap(body, back, False)))
    if current_body == body:
        return Change(kind, name, "unchanged", body, current)
    return Change(kind, name, "update", body, current,
                  _diff(kind, name, _swap(current_body, back, False), _swap(body, back, False)))


async def apply(api: Api, changes: list[Change]) -> None:
    """Carry out a plan (programs, snippets, templates, segments, then campaigns, in file order). A refusal of
    the first write is a :class:`ResourceError` naming the item (nothing was written); of a later one, a
    :class:`PartlyApplied` saying what was applied and what was not. (A call that got no answer may have been
    carried out: that item is named as partly applied.)"""
    ids: dict[str, str] = {}  # placeholder -> real id
    pending = [c for c in changes if c.action != "unchanged"]
    for i, c in enumerate(pending):
        writes = api.writes
        try:
            await _apply_one(api, c, ids)
        except (ResourceError, httpx.HTTPError) as exc:  # (which item: the service's answer names only the field)
            cause = f"{c.kind[:-1]} {c.name!r}: {exc}"
            state = ("perhaps applied" if isinstance(exc, httpx.HTTPError) else
                     "partly applied" if api.writes > writes else "not applied")
            if i == 0 and state == "not applied":
                raise ResourceError(cause + "\n(nothing was applied)") from None
            raise PartlyApplied(cause, pending[:i], c, state, pending[i + 1:]) from None


async def _apply_one(api: Api, c: Change, ids: dict[str, str]) -> None:
    """One change of the plan (``ids``: the real ids of what the plan created so far, by placeholder)."""
    if c.kind == "programs":
        await api.call("PUT", "campaign", f"/v1/programs/{c.name}", json=c.body)
    elif c.kind == "snippets":
        await api.call("PUT", "campaign", f"/v1/snippets/{c.name}", json=c.body)
    elif c.kind == "templates":
        path = "/v1/templates" + (f"/{c.current['id']}" if c.current else "")
        out = await api.call("PUT" if c.current else "POST", "campaign", path, json=c.body)
        ids[placeholder("template", c.name)] = out["id"]
    elif c.kind == "segments":
        path = "/v1/segments" + (f"/{c.current['id']}" if c.current else "")
        body = _fill_new_ids(c.body, ids)
        out = await api.call("PUT" if c.current else "POST", "segment", path, json=body)
        ids[placeholder("segment", c.name)] = out["id"]
    else:
        definition = _fill_new_ids(c.body["definition"], ids)
        if c.current is None:  # an archived one (an export of another workspace) is created paused, then archived
            archived = c.body["status"] == "archived"
            out = await api.call("POST", "campaign", "/v1/campaigns", json={
                "name": c.name, "status": "paused" if archived else c.body["status"], **definition})
            if archived:
                await api.call("POST", "campaign", f"/v1/campaigns/{out['id']}/archive")
            return
        if definition != c.current["definition"]:
            await api.call("PUT", "campaign", f"/v1/campaigns/{c.current['id']}",  # the file is the truth:
                           json={"name": c.name, "topic": None, **definition})  # no topic there, none here
        if c.body["status"] != c.current["status"]:
            action = {"active": "resume", "paused": "pause", "archived": "archive"}[c.body["status"]]
            await api.call("POST", "campaign", f"/v1/campaigns/{c.current['id']}/{action}")


def _fill_new_ids(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_fill_new_ids(n, ids) for n in node]
    if isinstance(node, dict):
        return {k: _fill_new_ids(v, ids) for k, v in node.items()}
    return ids.get(node, node) if isinstance(node, str) else node


async def export(api: Api) -> str:
    """Everything of the workspace as a file ``apply`` takes back (ids replaced by names), here or in another
    workspace — except one-off broadcasts whose time has passed: they fired (or were skipped) here, and elsewhere
    one could only be refused (a one-off time must be to come) or, created, never send. They are named in a
    comment at the top of the file; applied back here, the file leaves them as they are (apply changes only what
    a file holds)."""
    tpls = await api.all("campaign", "/v1/templates", "templates")
    segs = await api.all("segment", "/v1/segments", "segments")
    camps = await api.all("campaign", "/v1/campaigns", "campaigns")
    past = [(c["name"], at) for c in camps if (at := _passed_at(c["definition"]))]
    camps = [c for c in camps if not _passed_at(c["definition"])]
    back = {"template": {t["id"]: t["name"] for t in tpls}, "segment": {s["id"]: s["name"] for s in segs}}
    stages = await _stage_ids(api)
    programs = [(kind, await api.maybe("campaign", f"/v1/programs/{kind}")) for kind in program_config.KINDS]
    note = "".join(
        [f"# Left out: one-off broadcasts whose time has passed (they fired, or were skipped, in the workspace\n"
         f"# exported; give one a time to come to send it again): {', '.join(f'{n!r} (at {at})' for n, at in past)}\n"]
        if past else [])
    return note + _yaml({
        "programs": [{"name": kind, "enabled": p["enabled"], "config": p["config"]} for kind, p in programs if p],
        "snippets": [{"name": s["name"], "content": s["content"]}
                     for s in await api.all("campaign", "/v1/snippets", "snippets")],
        "templates": [_template_body(t) for t in tpls],
        "segments": [{"name": s["name"], "definition": _swap(s["definition"], back, False)} for s in segs],
        "campaigns": [{"name": c["name"], "status": c["status"], **_swap(_by_stage(c["definition"], stages), back,
                                                                           False)} for c in camps],
    })
