"""How every API answers a retry of a request made with an idempotency key (Stripe's convention): the first
answer again, as a 200 with ``Idempotent-Replayed: true``. One header and one OpenAPI entry for all routes that
take a key (delivery's messages, campaign's trigger, the loyalty ledger)."""

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from shared.errors import ValidationFailed, place_error

REPLAYED_HEADER = "Idempotent-Replayed"


def mark_replayed(response: Response) -> None:
    """This answer is the first one again: 200, and the header saying so."""
    response.status_code = 200
    response.headers[REPLAYED_HEADER] = "true"


def keys_differ() -> ValidationFailed:
    """The 422 of a request whose ``Idempotency-Key`` header and ``idempotency_key`` field are both given and differ:
    which one was meant? Both places are named."""
    msg = "the Idempotency-Key header and the idempotency_key field differ: give one, or the same in both"
    return ValidationFailed("Idempotency-Key header and idempotency_key field differ",
                            errors=[place_error(["header", "Idempotency-Key"], msg),
                                    place_error(["body", "idempotency_key"], msg)])


def replay_response(model: type[BaseModel], description: str = "Replay of an earlier request with the same "
                                                               "idempotency key: the first answer, unchanged"
                    ) -> dict[str, Any]:
    """The ``responses=`` entry of a route's replayed answer."""
    return {"model": model, "description": description,
            "headers": {REPLAYED_HEADER: {"description": "`true`: this answer is a replay",
                                          "schema": {"type": "string", "enum": ["true"]}}}}
