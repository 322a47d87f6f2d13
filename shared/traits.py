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
    """Combine two profiles' traits: each trait from whichever side set it last.

    A trait of ``other`` without a recorded time (``locale`` / ``timezone`` filled from a device's context, see
    :func:`fill_defaults`, or one set before trait times existed) only fills a trait ``into`` never had: the user's
    own locale must not give way to the one of a device they logged in from. ``into``'s untimed traits rank oldest
    against ``other``'s timed ones (an identify's explicit trait)."""
    traits, times = other
    updates = [(times[k], {k: v}) for k, v in traits.items() if k in times]
    updates += [(t, {k: None}) for k, t in times.items() if k not in traits]
    out, out_times = merge(into[0], into[1], updates)
    out.update(fill_defaults(out, out_times, {k: v for k, v in traits.items() if k not in times}))
    return out, out_times


def fill_defaults(traits: dict[str, Any], times: dict[str, str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Context-derived values (``locale``, ``timezone``) for traits the profile never had."""
    return {k: v for k, v in defaults.items() if k not in traits and k not in times}
