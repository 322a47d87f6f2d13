"""A/B test arithmetic (pure): is one variant's conversion rate really different from another's, and which leads?"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str
    entered: int
    converted: int
    clicked: int = 0  # entrants who clicked a message of this variant
    opened: int = 0  # entrants who opened one

    @property
    def rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0

    def share(self, n: int) -> float:
        return n / self.entered if self.entered else 0.0


def ranked(arms: list[Arm]) -> list[Arm]:
    """Best first: by conversion rate; a tie by click rate, then open rate, then the order given (the variant
    listed first). Never by the number of entrants: with nobody converted yet, that handed the lead to whichever
    variant the weights favoured, and it kept it."""
    return [a for _, a in sorted(enumerate(arms), key=lambda ia: (
        -ia[1].rate, -ia[1].share(ia[1].clicked), -ia[1].share(ia[1].opened), ia[0]))]


def two_proportion_p_value(a: Arm, b: Arm) -> float | None:
    """Two-sided p-value of a two-proportion z-test (None when either arm is empty or nothing differs)."""
    if not a.entered or not b.entered:
        return None
    pooled = (a.converted + b.converted) / (a.entered + b.entered)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.entered + 1 / b.entered))
    if se == 0:
        return None
    z = (a.rate - b.rate) / se
    return math.erfc(abs(z) / math.sqrt(2))


def compare(arms: list[Arm], alpha: float = 0.05) -> dict[str, object]:
    """The leading arm (``ranked``) and, for every other arm, the p-value of its difference from the leader."""
    if not arms:
        return {"leader": None, "significant": False, "p_values": {}}
    leader = ranked(arms)[0]
    p_values = {a.name: two_proportion_p_value(leader, a) for a in arms if a is not leader}
    significant = bool(p_values) and all(p is not None and p < alpha for p in p_values.values())
    return {"leader": leader.name, "significant": significant, "p_values": p_values}
