"""The Decision record (docs/contracts.md §3)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .labels import Action

DECISION_FIELDS = ("action", "category", "risk", "action_scores", "category_scores", "message_index", "tokens",
                   "latency_ms", "reason")


@dataclass(frozen=True)
class Decision:
    """What the guard does before a reply, and why."""

    action: str
    category: str
    risk: float
    action_scores: dict[str, float]
    category_scores: dict[str, float]
    message_index: int
    tokens: int
    latency_ms: float
    reason: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def action_enum(self) -> Action:
        return Action(self.action)

    @property
    def allowed(self) -> bool:
        return self.action == Action.ALLOW.value

    def to_dict(self) -> dict[str, Any]:
        """Exactly the docs/contracts.md §3 fields, JSON-ready."""
        data = asdict(self)
        return {k: data[k] for k in DECISION_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
