"""The OpenAPI documents are part of the product: every operation named and summarised, every field of every
schema described (by its model, or by the shared glossary for fields that mean the same everywhere), and every
JSON request body shown with an example the API takes."""

import importlib
import sys
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from shared.openapi_glossary import BY_FIELD
from shared.settings import Settings

SERVICES = ("ingest", "segment", "campaign", "delivery")


@cache
def _spec(service: str) -> dict[str, Any]:
    return importlib.import_module(f"services.{service}.app").create_app(Settings()).openapi()


def _operations(service: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in _spec(service)["paths"].items():
        for method, op in item.items():
            yield f"{method.upper()} {path}", op


def _inline_schemas(service: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Request and response schemas written out in an operation rather than referenced (ingest's tracking
    bodies), and the models they nest (``$defs``), each with the schema its local references start from."""
    for label, op in _operations(service):
        media = [*op.get("requestBody", {}).get("content", {}).values(),
                 *(m for response in op.get("responses", {}).values() for m in response.get("content", {}).values())]
        for m in media:
            root = m.get("schema", {})
            if "$ref" not in root:
                yield label, root, root
                for name, nested in root.get("$defs", {}).items():
                    yield f"{label} $defs/{name}", nested, root


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_has_an_id_a_summary_and_tags(service: str) -> None:
    assert not [label for label, op in _operations(service)
                if not (op.get("operationId") and op.get("summary") and op.get("tags"))]


@pytest.mark.parametrize("service", SERVICES)
def test_every_field_is_described(service: str) -> None:
    """Each property says what it is, or refers to a schema that does (its model's docstring). Nothing is left
    out: FastAPI's ``HTTPValidationError`` / ``ValidationError`` are dropped from the documents (the 422 is a
    problem document), and its generated form schemas (``Body_*``) are described by the glossary."""
    schemas = _spec(service)["components"]["schemas"]
    where = [(f"components/{name}", schema, schema) for name, schema in schemas.items()]
    where += list(_inline_schemas(service))

    def referenced(ref: str, root: dict[str, Any]) -> dict[str, Any]:
        kind, _, name = ref.removeprefix("#/").rpartition("/")
        return schemas[name] if kind == "components/schemas" else root["$defs"][name]

    def described(prop: dict[str, Any], root: dict[str, Any]) -> bool:
        if prop.get("description"):
            return True
        refs = [prop.get("$ref")] + [p.get("$ref") for key in ("allOf", "anyOf", "oneOf") for p in prop.get(key, [])]
        return any(r and referenced(r, root).get("description") for r in refs)

    missing = [f"{label}.{field}" for label, schema, root in where
               for field, prop in (schema.get("properties") or {}).items() if not described(prop, root)]
    assert not missing


def test_the_glossary_names_fields_it_describes() -> None:
    """A ``Schema.field`` entry whose field was renamed or removed, or whose model now describes it, would
    silently describe nothing."""
    used = {f"{name}.{field}" for service in SERVICES
            for name, schema in _spec(service)["components"]["schemas"].items()
            for field, prop in (schema.get("properties") or {}).items()
            if prop.get("description") == BY_FIELD.get(f"{name}.{field}")}
    assert not set(BY_FIELD) - used


def _models(service: str) -> dict[str, set[type[BaseModel]]]:
    """The service's and shared pydantic models by class name: the name FastAPI gives a model's component
    schema (it qualifies the name only where two models share one, and then nothing here matches it)."""
    _spec(service)  # the app is built: its modules are imported
    found: dict[str, set[type[BaseModel]]] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith((f"services.{service}.", "shared.")):
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module_name:
                    found.setdefault(value.__name__, set()).add(value)
    return found


def _examples(media: dict[str, Any], schema: dict[str, Any]) -> list[Any]:
    """Whole request bodies the document shows: the media type's examples, the schema's own, or (when it has
    none) one made of each field's first example."""
    shown = [e["value"] for e in media.get("examples", {}).values()] + ([media["example"]] if "example" in media
                                                                        else [])
    shown += schema.get("examples", [])
    if shown:
        return shown
    fields = {name: prop["examples"][0] for name, prop in schema.get("properties", {}).items() if prop.get("examples")}
    return [fields] if fields else []


@pytest.mark.parametrize("service", SERVICES)
def test_every_json_request_body_has_an_example_the_api_takes(service: str) -> None:
    """Each example matches the documented schema (schemathesis sends them) and its model accepts it, checks
    across fields included; a body whose fields each carry an example is shown as one body made of them."""
    spec, models = _spec(service), _models(service)
    without, invalid = [], []
    for label, op in _operations(service):
        media = op.get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            continue
        ref = media["schema"].get("$ref")
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else media["schema"]
        examples = _examples(media, schema)
        if not examples:
            without.append(label)
        validator = Draft202012Validator({**media["schema"], "components": spec["components"]})
        (model,) = models[schema["title"]]
        for example in examples:
            problems = [e.message for e in validator.iter_errors(example)]
            try:
                model.model_validate(example)
            except ValueError as exc:
                problems.append(str(exc))
            if problems:
                invalid.append((label, example, problems))
    assert not without
    assert not invalid


def test_batch_examples_are_valid_messages() -> None:
    """The batches shown are stored message by message: each item must be a message ingest takes."""
    from services.delivery.schemas import BatchIn, SendMessage
    from services.ingest.api import _EXAMPLES, _item_adapter
    from services.ingest.schemas import BatchRequest

    batch = BatchRequest.model_validate(_EXAMPLES["batch"])
    for item in batch.batch:
        _item_adapter.validate_python(item)
    for messages in BatchIn.model_json_schema()["properties"]["messages"]["examples"]:
        for message in messages:
            SendMessage.model_validate(message)


def test_campaign_template_and_segment_examples_pass_the_checks_past_the_schema() -> None:
    """Journeys, Liquid and condition trees are checked on save beyond their models (unreachable steps, unknown
    filters or variables, a node of no kind): the examples shown pass those checks too."""
    from services.campaign import campaigns, templates
    from services.segment import segments

    schemas = {service: _spec(service)["components"]["schemas"] for service in ("campaign", "segment")}
    campaign = schemas["campaign"]
    shown = [_examples({}, campaign["CampaignCreate"])[0], *_examples({}, campaign["CampaignUpdate"])]
    assert all(example.get("steps") for example in shown)
    for example in shown:
        campaigns.journey_from(example)
    for example in _examples({}, campaign["TemplateCreate"]):
        for fields in [example, *example.get("locales", {}).values()]:
            templates.validate({k: fields.get(k) for k in templates.FIELDS}, {}, templates.VARIABLES)
    definitions = [prop["examples"][0] for name in ("SegmentCreate", "SegmentUpdate", "PreviewRequest", "SearchRequest")
                   for prop in [schemas["segment"][name]["properties"]["definition"]]]
    for definition in definitions:
        segments.validate_definition(definition)


def test_a_header_parameter_is_spelled_the_same_in_every_service() -> None:
    """Delivery documented ``idempotency-key`` where campaign documents ``Idempotency-Key``: a generated client
    names the argument after the spelling, so the same header became two different arguments."""
    spellings: dict[str, set[str]] = {}
    for service in SERVICES:
        for _, op in _operations(service):
            for p in op.get("parameters", []):
                if p["in"] == "header":
                    spellings.setdefault(p["name"].lower(), set()).add(p["name"])
    assert spellings["idempotency-key"] == {"Idempotency-Key"}
    assert all(len(names) == 1 for names in spellings.values()), spellings


@pytest.mark.parametrize("service", SERVICES)
def test_every_parameter_is_described(service: str) -> None:
    """Path and query parameters said nothing (``segment_id``, ``limit``, delivery's ``status`` filter …): a generated
    client's documentation of each argument was empty, and ``token`` meant a push token on one route and a signed
    link on others. Each now says what it is (``shared.openapi_glossary.BY_PARAMETER``)."""
    assert not [f"{label} {p['in']} {p['name']}" for label, op in _operations(service)
                for p in op.get("parameters", []) if not p.get("description")]


def test_the_parameter_glossary_names_parameters_it_describes() -> None:
    """An entry for a parameter renamed or removed would silently describe nothing."""
    from shared.openapi_glossary import BY_PARAMETER

    used = {key for service in SERVICES for path, item in _spec(service)["paths"].items() for op in item.values()
            for p in op.get("parameters", []) for key in (f"{path}|{p['name']}", p["name"])
            if p.get("description") == BY_PARAMETER.get(key)}
    assert not set(BY_PARAMETER) - used


@pytest.mark.parametrize("service", SERVICES)
def test_the_503_every_route_can_answer_is_documented(service: str) -> None:
    """PostgreSQL or a sibling service not answering is a 503 problem with Retry-After on every route (a template
    preview or a trigger asks ingest, a campaign naming a segment asks segment; docs/operations.md), but no
    operation listed it: a generated client met an undeclared status."""
    missing = [label for label, op in _operations(service) if label.split()[1] not in ("/healthz", "/metrics")
               and "503" not in op["responses"]]
    assert not missing
    api = [op for label, op in _operations(service) if label.split()[1] not in ("/healthz", "/readyz", "/metrics")]
    assert all("Retry-After" in op["responses"]["503"].get("headers", {}) for op in api
               if op["operationId"] != "get_vapid_public_key")  # (its own 503: a key that is not usable)


@pytest.mark.parametrize("service", SERVICES)
def test_the_413_every_body_can_answer_is_documented(service: str) -> None:
    """A request body over its limit is a 413 problem with ``limit_bytes`` on every route (shared.web's
    BodyLimitMiddleware: a 17 MB ``POST /v1/messages``), but only ingest's tracking routes and the webhooks listed
    it: a generated client met an undeclared status. Every operation that takes a body lists it now."""
    missing = [label for label, op in _operations(service) if "requestBody" in op
               and "application/problem+json" not in op["responses"].get("413", {}).get("content", {})]
    assert not missing
    limit = [op["responses"]["413"] for label, op in _operations(service) if label == "POST /v1/messages"]
    assert all("limit_bytes" in r["description"] for r in limit)


def _keys(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k
            if k not in ("examples", "example", "default", "enum", "const"):  # (values, not schemas)
                yield from _keys(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _keys(v, f"{path}/{i}")


@pytest.mark.parametrize("service", SERVICES)
def test_bounds_are_json_schema_keywords(service: str) -> None:
    """A bound on an optional number (``JsonInt | None = Field(None, ge=1)``) came out as pydantic's own ``ge``,
    which no JSON Schema validator or code generator knows: clients saw no bound, and a request their schema took
    was refused. Every bound is ``minimum``/``maximum`` (or exclusive)."""
    stray = [f"{path}/{key}" for path, key in _keys(_spec(service)) if key in ("ge", "le", "gt", "lt")
             and not path.endswith(("/properties", "/parameters"))]
    assert stray == [], stray


def test_delivery_documents_the_erasure_it_asks_to_come_back_for() -> None:
    """Delivery answers an erasure 409 while a message to the person is with a sender (ingest asks again)."""
    op = _spec("delivery")["paths"]["/v1/privacy/erasure"]["post"]
    assert "409" in op["responses"]
