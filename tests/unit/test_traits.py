import itertools

from hypothesis import given
from hypothesis import strategies as st

from shared.traits import fill_defaults, merge, merge_profiles

stamps = st.sampled_from([f"2026-11-2{d}T00:00:00+00:00" for d in range(1, 6)])
values = st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["a", "b"]))
updates = st.lists(st.tuples(stamps, st.dictionaries(st.sampled_from(["plan", "name", "x"]), values, max_size=3)),
                   max_size=6)


@given(updates)
def test_updates_of_different_times_may_arrive_in_any_order(ups) -> None:
    ups = list({ts: (ts, changes) for ts, changes in ups}.values())  # one update per time
    results = {tuple(sorted(merge({}, {}, perm)[0].items())) for perm in itertools.islice(
        itertools.permutations(ups), 50)}
    assert len(results) <= 1


def test_of_updates_with_the_same_time_the_later_wins() -> None:
    """Two identify calls within one millisecond (an SDK's resolution), or a batch without timestamps."""
    t = "2026-11-28T10:00:00.123000+00:00"
    traits, times = merge({}, {}, [(t, {"plan": "pro", "seats": 9}), (t, {"plan": "basic"})])
    assert traits == {"plan": "basic", "seats": 9}
    assert merge(traits, times, [(t, {"seats": None})])[0] == {"plan": "basic"}


@given(updates, updates)
def test_applying_in_two_steps_equals_one_step(a, b) -> None:
    step = merge(*merge({}, {}, a), b)
    assert step == merge({}, {}, a + b)


@given(updates)
def test_merge_is_idempotent(ups) -> None:
    once = merge({}, {}, ups)
    assert merge(*once, ups) == once


@given(updates, updates)
def test_profile_merge_equals_seeing_all_updates(a, b) -> None:
    assert merge_profiles(merge({}, {}, a), merge({}, {}, b))[0] == merge({}, {}, a + b)[0]


def test_newer_wins_and_null_removes_for_good() -> None:
    t1, t2, t3 = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"
    traits, times = merge({}, {}, [(t2, {"plan": "pro"}), (t1, {"plan": "free"})])
    assert traits == {"plan": "pro"}
    traits, times = merge(traits, times, [(t3, {"plan": None})])
    assert traits == {}
    traits, times = merge(traits, times, [(t2, {"plan": "late"})])  # older than the removal
    assert traits == {}


def test_defaults_fill_only_unknown_traits() -> None:
    assert fill_defaults({"locale": "fr"}, {}, {"locale": "en", "timezone": "UTC"}) == {"timezone": "UTC"}
    assert fill_defaults({}, {"timezone": "2026"}, {"timezone": "UTC"}) == {}


def test_an_untimed_trait_of_the_merged_profile_only_fills_what_the_survivor_never_had() -> None:
    """Context-filled ``locale`` / ``timezone`` have no time: the absorbed device's must not replace the user's own
    (timed or not), nor one the user removed; they fill a survivor that never had them. A timed trait wins over an
    untimed one either way."""
    t = "2026-01-01T00:00:00+00:00"
    device = ({"locale": "it-IT", "timezone": "Europe/Rome"}, {})
    assert merge_profiles(({"locale": "en-GB", "timezone": "Europe/London"}, {}), device)[0] == {
        "locale": "en-GB", "timezone": "Europe/London"}
    assert merge_profiles(({"locale": "en-GB"}, {"locale": t}), device) == (
        {"locale": "en-GB", "timezone": "Europe/Rome"}, {"locale": t})
    assert merge_profiles(({}, {"locale": t}), device)[0] == {"timezone": "Europe/Rome"}  # removed: stays removed
    assert merge_profiles(({"locale": "en-GB"}, {}), ({"locale": "it-IT"}, {"locale": t})) == (
        {"locale": "it-IT"}, {"locale": t})
