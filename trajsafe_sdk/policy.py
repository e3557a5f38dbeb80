"""Policy: from the monitor's scores to a Decision (severity ladder, sticky terminate, probe de-escalation)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .core import Assessment, ceiling_action_scores, floor_action_scores
from .decision import Decision
from .labels import ACTIONS, CATEGORIES

DEFAULT_THRESHOLDS: dict[str, float] = {"probe": 0.5, "steer": 0.5, "refuse": 0.5, "terminate": 0.6}
LADDER = ("terminate", "refuse", "steer", "probe")
RULE_SETTINGS = ("sticky_terminate", "deescalate_risk", "probe_risk", "flagged_refuse", "floor_risk", "ceiling_risk")
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}  # allow < probe < steer < refuse < terminate


@dataclass
class Policy:
    """Turns an Assessment into a Decision.

    Going down from `terminate` to `probe`, the first action `a` with P(action >= a) >= thresholds[a] is chosen,
    else `allow`. A terminated conversation stays terminated (`sticky_terminate`) until the application resets it.
    After a probe, a reply that lowers the risk (a credible purpose) de-escalates: at most `steer`, and `allow`
    when the risk falls under `deescalate_risk`; a probe is never repeated on the next turn (it becomes `steer`).

    Where the ladder says `allow` but the monitor's trajectory risk reaches `probe_risk`, the user is probed
    (asked for their purpose): the risk head ranks conversations better than the action head's uncertain middle.

    Monotone-escalation floor: once an earlier user turn was flagged or reached trajectory risk `floor_risk`, a user
    turn's action scores are floored by the same message read alone (`Assessment.alone_action_scores`,
    `core.floor_action_scores`): in a conversation that already looks harmful, a message the monitor refuses on its
    own is never handled more mildly. At `floor_risk` 0 the floor binds on every user turn;
    above it, a benign-looking conversation lets the context clear a message.

    Context ceiling, the floor's mirror: while a conversation does not look harmful yet (no earlier flag, no
    earlier trajectory risk `floor_risk`), a user turn whose trajectory risk is under `ceiling_risk` is decided on
    the milder of its trajectory reading and the same message read alone (`core.ceiling_action_scores`; the risk
    probe reads the lower risk): context alone does not make a benign-looking chat stricter unless it is confident.
    Its trajectory risk still counts towards `floor_risk`, so an escalation that builds up is acted on from the
    next turn. `ceiling_risk` 0: off; above 1: every such turn.

    Once a conversation has been flagged (an earlier user turn was probed, steered or refused), a later turn is
    refused when P(action >= refuse) reaches `flagged_refuse` (when that is lower than the refuse threshold): after
    warnings, an explicit harmful goal needs less evidence to be stopped.

    A threshold above 1 disables its action. `stage` ("input", "output", "stream") says what was just read: only
    input decisions are remembered for de-escalation; any `terminate` is sticky. Subclasses may override
    `ladder_action`.
    """

    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    sticky_terminate: bool = True
    deescalate_risk: float = 0.5
    probe_risk: float = 1.1  # above 1: off
    flagged_refuse: float = 1.1  # above 1: off
    floor_risk: float = 0.5  # 0: every user turn; above 1: the floor needs an earlier flag
    ceiling_risk: float = 0.0  # 0: off; the context ceiling holds under this trajectory risk

    @classmethod
    def from_package(cls, defaults: Mapping[str, Any], **overrides: Any) -> Policy:
        thresholds = {k: float(defaults[k]) for k in LADDER if k in defaults}
        thresholds.update(overrides.pop("thresholds", {}) or {})
        for key in RULE_SETTINGS:
            if key in defaults and key not in overrides:
                overrides[key] = defaults[key]
        policy = cls(thresholds={**DEFAULT_THRESHOLDS, **thresholds}, **overrides)
        policy.validate()
        return policy

    @property
    def floors_every_turn(self) -> bool:
        """Whether every user turn is floored by its message read alone (`floor_risk` 0): each needs that read."""
        return self.floor_risk <= 0

    def to_dict(self) -> dict[str, Any]:
        """The settings in `monitor.json["policy"]` form (what `from_package` reads), JSON-ready."""
        return {**self.thresholds, **{name: getattr(self, name) for name in RULE_SETTINGS}}

    def validate(self) -> None:
        """Raise ValueError on an unknown action name or a threshold that is not a number >= 0."""
        if not isinstance(self.thresholds, Mapping):
            raise ValueError(f"policy thresholds must map action -> float, got {type(self.thresholds).__name__}")
        for name, value in self.thresholds.items():
            if name not in LADDER:
                raise ValueError(f"unknown policy threshold {name!r}; expected one of {', '.join(LADDER)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not float(value) >= 0.0:
                raise ValueError(f"policy threshold {name}={value!r} must be a number in [0, 1] (above 1: never)")
        if not 0.0 <= float(self.deescalate_risk) <= 1.0:
            raise ValueError(f"deescalate_risk={self.deescalate_risk!r} must be within [0, 1]")
        for name in ("probe_risk", "flagged_refuse", "floor_risk", "ceiling_risk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not float(value) >= 0.0:
                raise ValueError(f"{name}={value!r} must be a number in [0, 1] (above 1: never)")

    def choose(self, action_scores: Any) -> str:
        """The severity ladder over cumulative action probabilities."""
        for action in LADDER:
            at_least = float(sum(action_scores[ACTIONS.index(action):]))
            if at_least >= self.thresholds.get(action, 1.1):
                return action
        return "allow"

    def bracket(self, assessment: Assessment, state: Mapping[str, Any]) -> tuple[Assessment, bool]:
        """A user turn's reading after the monotone floor (the conversation looks harmful) or the context ceiling
        (it does not yet, and the trajectory alone would act), and whether the ceiling made it milder. The message
        is read alone only here, where one of them can bind."""
        if state.get("flagged") or state.get("max_risk", 0.0) >= self.floor_risk:
            alone = assessment.alone_scores()
            if alone is not None:
                return dataclasses.replace(assessment, action_scores=floor_action_scores(
                    assessment.action_scores, alone)), False
        elif assessment.risk < self.ceiling_risk and self.ladder_action(assessment) != "allow":
            alone = assessment.alone_scores()
            if alone is not None:
                risk = assessment.risk if assessment.alone_risk is None else min(assessment.risk, assessment.alone_risk)
                milder = dataclasses.replace(assessment, risk=risk, action_scores=ceiling_action_scores(
                    assessment.action_scores, alone))
                return milder, self.ladder_action(milder) != self.ladder_action(assessment)
        return assessment, False

    def ladder_action(self, assessment: Assessment) -> str:
        """The action for one assessment before conversation state is applied: the ladder, else a probe when
        the trajectory risk reaches `probe_risk`."""
        action = self.choose(assessment.action_scores)
        if action == "allow" and assessment.risk >= self.probe_risk:
            return "probe"
        return action

    def decide(self, assessment: Assessment, state: dict[str, Any] | None = None, stage: str = "input") -> Decision:
        """A Decision for `assessment`; `state` (per conversation) carries termination and probe history."""
        state = state if state is not None else {}
        trajectory_risk = float(assessment.risk)  # remembered and reported, whatever the alone reading says
        ceiled = False
        if stage == "input":
            assessment, ceiled = self.bracket(assessment, state)
        action = self.ladder_action(assessment)
        category = assessment.category
        reason = ""
        last = state.get("last_decision")
        if self.sticky_terminate and state.get("terminated"):
            action, reason = "terminate", "conversation was terminated earlier; reset it to continue"
        elif stage != "input":
            pass  # a reply (or part of one) is judged on its own scores; no probe bookkeeping
        elif state.get("flagged") and SEVERITY[action] < SEVERITY["refuse"] \
                and float(sum(assessment.action_scores[ACTIONS.index("refuse"):])) >= self.flagged_refuse:
            action, reason = "refuse", "refuse: an earlier turn was already flagged and this one leans to refuse"
        elif last is not None and last.get("action") == "probe" and action in ("allow", "probe", "steer"):
            if assessment.risk < last.get("risk", 1.0) and assessment.risk < self.deescalate_risk:
                action, reason = "allow", "the user's answer to the probe lowered the risk"
            elif action == "probe":
                action, reason = "steer", "probe already asked; answering at a safe level of abstraction"
        if action == "terminate":
            state["terminated"] = True
            state.setdefault("terminated_at", assessment.message_index)  # forks before it do not inherit it
        if action != "allow" and category == "benign":
            category = CATEGORIES[1 + int(max(range(len(CATEGORIES) - 1),
                                              key=lambda i: assessment.category_scores[i + 1]))]
        if ceiled and action == "allow" and not reason:
            reason = (f"the context raised the risk ({trajectory_risk:.2f}) but the message read alone does not; "
                      "from here the conversation counts as looking harmful")
        reason = reason or _reason(action, category, trajectory_risk)
        if stage == "input":
            state["flagged"] = state.get("flagged", False) or action != "allow"
            state["max_risk"] = max(float(state.get("max_risk", 0.0)), trajectory_risk)
            state["last_decision"] = {"action": action, "risk": trajectory_risk,
                                      "message_index": assessment.message_index}
        scores = dataclasses.replace(assessment, risk=trajectory_risk).to_dict()  # labelled and rounded
        return Decision(
            action=action,
            category=category,
            risk=scores["risk"],
            action_scores=scores["action_scores"],
            category_scores=scores["category_scores"],
            message_index=assessment.message_index,
            tokens=int(assessment.tokens),
            latency_ms=scores["latency_ms"],
            reason=reason,
        )


def parse_settings(pairs: Iterable[str]) -> dict[str, float | bool]:
    """`KEY=VALUE` pairs (the keys of `Policy.to_dict`, e.g. `steer=0.7`, `ceiling_risk=0.9`,
    `sticky_terminate=false`) as policy settings to lay over a package's (`Policy.from_package({**defaults,
    **settings})`); ValueError names the bad pair. Ranges are checked by `Policy.validate`."""
    settings: dict[str, float | bool] = {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in str(pair).partition("="))
        if not sep or key not in (*LADDER, *RULE_SETTINGS):
            raise ValueError(f"policy setting {pair!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join((*LADDER, *RULE_SETTINGS))}")
        if key == "sticky_terminate":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"policy setting {pair!r}: sticky_terminate is true or false")
            settings[key] = value.lower() == "true"
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"policy setting {pair!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"policy setting {pair!r}: {value!r} is not a finite number")
        settings[key] = number
    return settings


def _reason(action: str, category: str, risk: float) -> str:
    if action == "allow":
        return f"no harmful trajectory detected (risk {risk:.2f})"
    return f"{action}: trajectory heading towards {category} (risk {risk:.2f})"
