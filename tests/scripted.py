"""Real Policies that force or script actions in tests (the monitor's random scores are ignored)."""

from __future__ import annotations

import threading
from typing import Any

from trajsafe_sdk.guard import Guard
from trajsafe_sdk.policy import LADDER, Policy


def forced(action: str) -> Policy:
    """A real Policy whose thresholds force `action` whatever the (random) monitor scores."""
    thresholds = {a: 1.1 for a in LADDER}
    if action != "allow":
        thresholds[action] = 0.0
    return Policy(thresholds=thresholds)


class ScriptedPolicy(Policy):
    """A real Policy whose ladder reads the text instead of the random scores: `rules` (word -> action) on the user
    message, `output_rules` on the reply, and a cut at the `stream_cut_at`-th check of a streamed reply."""

    def __init__(self, rules: dict[str, str] | None = None, output_rules: dict[str, str] | None = None,
                 stream_cut_at: int | None = None) -> None:
        super().__init__(thresholds={a: 1.1 for a in LADDER})
        self.rules, self.output_rules, self.stream_cut_at = rules or {}, output_rules or {}, stream_cut_at
        self.pool: Any = None
        self._local = threading.local()

    def decide(self, assessment, state=None, stage="input"):
        self._local.args = (state, stage)
        return super().decide(assessment, state, stage)

    def ladder_action(self, assessment) -> str:
        state, stage = self._local.args
        if stage == "stream":
            state["checks"] = state.get("checks", 0) + 1
            return "refuse" if self.stream_cut_at and state["checks"] >= self.stream_cut_at else "allow"
        state["checks"] = 0
        text = next((s.messages[assessment.message_index].content for s in list(self.pool._sessions.values())
                     if s.state is state and assessment.message_index < len(s.messages)), "").lower()
        rules = self.rules if stage == "input" else self.output_rules
        return next((action for word, action in rules.items() if word in text), "allow")


def scripted_guard(monitor, events: list | None = None, **policy: Any) -> Guard:
    p = ScriptedPolicy(**policy)
    g = Guard(monitor=monitor, policy=p, stream_check_every=0,
              on_decision=events.append if events is not None else None)
    p.pool = g.pool
    return g
