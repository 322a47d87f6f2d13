"""The OpenAPI documents are part of the product: every operation named and summarised, every field of every
schema described (by its model, or by the shared glossary for fields that mean the same everywhere)."""

import importlib
from functools import cache
from typing import Any

import pytest

from shared.openapi_glossary import BY_FIELD
from shared.settings import Settings

SERVICES = ("ingest", "segment", "campaign", "delivery")


@cache
def _spec(service: str) -> dict[str, Any]:
    return importlib.import_module(f"services.{service}.app").create_app(Settings()).openapi()


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_has_an_id_and_a_summary(service: str) -> None:
    missing = [f"{method.upper()} {path}" for path, item in _spec(service)["paths"].items()
               for method, op in item.items() if not (op.get("operationId") and op.get("summary"))]
    assert not missing


@pytest.mark.parametrize("service", SERVICES)
def test_every_field_is_described(service: str) -> None:
    schemas = _spec(service)["components"]["schemas"]

    def described(prop: dict[str, Any]) -> bool:
        if prop.get("description"):
            return True
        refs = [prop.get("$ref")] + [p.get("$ref") for key in ("allOf", "anyOf", "oneOf") for p in prop.get(key, [])]
        return any(r and schemas[r.rsplit("/", 1)[1]].get("description") for r in refs)

    missing = [f"{name}.{field}" for name, schema in schemas.items()
               for field, prop in (schema.get("properties") or {}).items() if not described(prop)]
    assert not missing


def test_the_glossary_names_fields_that_exist() -> None:
    """A ``Schema.field`` entry whose field was renamed or removed would silently describe nothing."""
    fields = {f"{name}.{field}" for service in SERVICES
              for name, schema in _spec(service)["components"]["schemas"].items()
              for field in (schema.get("properties") or {})}
    assert not set(BY_FIELD) - fields


def test_request_examples_are_valid_requests() -> None:
    """The examples shown in the documents are bodies the API takes."""
    from services.campaign.schemas import CampaignUpdate
    from services.delivery.schemas import BatchIn, SendMessage
    from services.ingest.api import _EXAMPLES, _item_adapter
    from services.ingest.schemas import BatchRequest

    batch = BatchRequest.model_validate(_EXAMPLES["batch"])
    for item in batch.batch:
        _item_adapter.validate_python(item)
    for example in CampaignUpdate.model_json_schema()["examples"]:
        CampaignUpdate.model_validate(example)
    for messages in BatchIn.model_json_schema()["properties"]["messages"]["examples"]:
        for message in messages:
            SendMessage.model_validate(message)
