"""The label space shared by the monitor, the policy and every tool (docs/contracts.md §1-2)."""

from __future__ import annotations

from enum import Enum


class Action(str, Enum):
    """The five guard actions, in order of severity."""

    ALLOW = "allow"
    PROBE = "probe"
    STEER = "steer"
    REFUSE = "refuse"
    TERMINATE = "terminate"

    @property
    def severity(self) -> int:
        return ACTIONS.index(self.value)

    @property
    def coarse(self) -> str:
        """`continue`, `intervene` or `terminate`."""
        if self is Action.ALLOW:
            return "continue"
        return "terminate" if self is Action.TERMINATE else "intervene"

    def __str__(self) -> str:
        return self.value


class Category(str, Enum):
    """Twelve harm-amplification risks plus `benign`."""

    BENIGN = "benign"
    CBRN = "cbrn"
    WEAPONS_EXPLOSIVES = "weapons_explosives"
    CYBER_INTRUSION = "cyber_intrusion"
    MALWARE = "malware"
    VIOLENT_HARM = "violent_harm"
    FRAUD_SCAMS = "fraud_scams"
    INFLUENCE_OPS = "influence_ops"
    HARASSMENT_HATE = "harassment_hate"
    PRIVACY_SURVEILLANCE = "privacy_surveillance"
    SELF_HARM = "self_harm"
    CHILD_EXPLOITATION = "child_exploitation"
    ILLICIT_GOODS = "illicit_goods"

    def __str__(self) -> str:
        return self.value


ACTIONS: list[str] = ["allow", "probe", "steer", "refuse", "terminate"]
CATEGORIES: list[str] = [c.value for c in Category]
RISK_LABELS: list[str] = ["safe", "harm"]
NUM_LABELS = len(ACTIONS) + len(CATEGORIES) + len(RISK_LABELS)

# What a correct guard does on a turn, as the bundled demo and the examples state it per user turn: the actions that
# meet each expectation.
EXPECTATIONS: dict[str, tuple[str, ...]] = {
    "allow": ("allow",),  # a benign turn: the model is called with the conversation unchanged
    "block": ("refuse", "terminate"),  # a clearly harmful turn: the model is not called
    "any": tuple(ACTIONS),  # an ambiguous turn: no expectation
}
