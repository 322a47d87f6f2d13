"""The stable segment id of each lifecycle stage, known to segment (which writes stage transitions) and to
campaign (whose journeys trigger on them) without a call between them."""

import uuid

_NAMESPACE = uuid.UUID("6c1f3c1e-7f58-4d1e-9a55-3b8f1f0b7a11")


def stage_segment_id(workspace_id: uuid.UUID | str, stage: str) -> uuid.UUID:
    """The id under which a stage's entries and exits appear in the transition feed."""
    return uuid.uuid5(_NAMESPACE, f"{workspace_id}:lifecycle:{stage}")
