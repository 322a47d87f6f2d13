"""Trait merging, per trait: the value with the newest timestamp wins, and ``null`` removes a trait.

Each profile keeps ``trait_times`` beside ``traits``: when each trait was last set (or removed). Keeping
the time of a removal stops an older, late-arriving identify from bringing the trait back, so updates with
different times may arrive in any order (replays, late events, profile merges). Of updates with the same time
the later one wins: an SDK stamping milliseconds (``identify(plan="pro")`` then ``identify(plan="basic")``
within one), or a batch sent without timestamps (all get the receive time), means the later call. Ingest
applies a batch's updates in its order and segment reads them from the event log in the same order.
"""

from collections.abc import Iterable
from typing import Any

Update = tuple[str, dict[str, Any]]  # (ISO-8601 UTC timestamp, traits)


def merge(traits: dict[str, Any], times: dict[str, str], updates: Iterable[Update]
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply ``updates`` to (``traits``, ``times``); returns new dicts, the inputs are not changed."""
    out, out_times = dict(traits), dict(times)
    for ts, changes in updates:
        for key, value in changes.items():
            current_ts = out_times.get(key)
            if current_ts is not None and current_ts > ts:
                continue
            out_times[key] = ts
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
    return out, out_times


def merge_profiles(into: tuple[dict[str, Any], dict[str, str]], other: tuple[dict[str, Any], dict[str, str]]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """Combine two profiles' traits: each trait from whichever side set it last."""
    traits, times = other
    # traits without a recorded time (set before trait times existed) rank oldest
    updates = [(times.get(k, ""), {k: v}) for k, v in traits.items()]
    updates += [(t, {k: None}) for k, t in times.items() if k not in traits]
    return merge(into[0], into[1], updates)


def fill_defaults(traits: dict[str, Any], times: dict[str, str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Context-derived values (``locale``, ``timezone``) for traits the profile never had."""
    return {k: v for k, v in defaults.items() if k not in traits and k not in times}
