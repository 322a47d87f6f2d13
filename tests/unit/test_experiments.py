"""The A/B significance test against known values and its invariants."""

from hypothesis import given
from hypothesis import strategies as st

from services.campaign.experiments import Arm, compare, ranked, two_proportion_p_value


def test_known_values() -> None:
    # 200/1000 vs 150/1000: z ≈ 2.92, p ≈ 0.0035
    p = two_proportion_p_value(Arm("A", 1000, 200), Arm("B", 1000, 150))
    assert p is not None and abs(p - 0.0035) < 0.0005
    assert two_proportion_p_value(Arm("A", 100, 10), Arm("B", 100, 10)) == 1.0
    assert two_proportion_p_value(Arm("A", 0, 0), Arm("B", 10, 1)) is None


def test_compare_names_the_leader_and_significance() -> None:
    out = compare([Arm("A", 1000, 150), Arm("B", 1000, 200)])
    assert out["leader"] == "B" and out["significant"] is True
    close = compare([Arm("A", 50, 5), Arm("B", 50, 6)])
    assert close["leader"] == "B" and close["significant"] is False


@given(st.integers(1, 10_000), st.integers(0, 10_000), st.integers(1, 10_000), st.integers(0, 10_000))
def test_p_values_are_probabilities_and_symmetric(n1, c1, n2, c2) -> None:
    a, b = Arm("A", n1, min(c1, n1)), Arm("B", n2, min(c2, n2))
    p = two_proportion_p_value(a, b)
    assert p is None or 0.0 <= p <= 1.0
    assert p == two_proportion_p_value(b, a)


def test_ties_go_to_clicks_then_opens_then_the_order_given_never_to_entrants() -> None:
    # nobody converted: B, listed second and with fewer entrants, leads on clicks
    assert [a.name for a in ranked([Arm("A", 90, 0, clicked=1, opened=50), Arm("B", 10, 0, clicked=2, opened=1)])] \
        == ["B", "A"]
    assert compare([Arm("A", 10, 0, opened=2), Arm("B", 90, 0, opened=9)])["leader"] == "A"  # 20 % vs 10 % opened
    assert compare([Arm("A", 10, 0), Arm("B", 90, 0)])["leader"] == "A"  # all equal: the first given
    assert compare([Arm("B", 90, 0), Arm("A", 10, 0)])["leader"] == "B"
    assert compare([Arm("A", 90, 9, clicked=90), Arm("B", 10, 2)])["leader"] == "B"  # conversions first
