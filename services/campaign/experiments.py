"""A/B test arithmetic (pure): is one variant's conversion rate really different from another's?"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str
    entered: int
    converted: int

    @property
    def rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0


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
    """The leading arm and, for every other arm, the p-value of its difference from the leader."""
    if not arms:
        return {"leader": None, "significant": False, "p_values": {}}
    leader = max(arms, key=lambda a: (a.rate, a.entered))
    p_values = {a.name: two_proportion_p_value(leader, a) for a in arms if a is not leader}
    significant = bool(p_values) and all(p is not None and p < alpha for p in p_values.values())
    return {"leader": leader.name, "significant": significant, "p_values": p_values}
