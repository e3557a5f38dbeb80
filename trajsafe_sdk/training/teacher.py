"""The hindsight teacher: labels EVERY user and assistant message of a whole trajectory.

The teacher sees the whole conversation: its final ``label`` / ``category`` and the per-message annotations set by
:mod:`~trajsafe_sdk.training.synth` or the source converters (user ``level`` 0..3 and ``event``; assistant
``reply``). The student monitor only sees the prefix; trained on these targets it learns to anticipate.

Cost model
----------
For each user turn the teacher picks the action minimising

    expected cost(a) = p_harm * H(level) * leak(a)  +  (1 - p_harm) * friction(a)

with leak (share of harm not prevented) allow 1, probe 0.5, steer 0.3, refuse 0.05, terminate 0; friction on a
benign user allow 0, probe 0.1, steer 0.25, refuse 1, terminate 2; and harm H growing with the turn's level
(``HARM``: level 0 -> 0, 1 -> 1, 2 -> 3, a second clear-harm attempt after a refusal or evasion -> 6, 3 -> 10).
``p_harm`` is the hindsight probability that the trajectory is heading to harm — it is also the ``risk`` target.
Worked out for the levels we annotate, the minimiser is the rule table below, which is what the code implements
(explicit rules are easier to audit than a solver; ``cost_optimal_action`` checks the correspondence):

* benign conversation (no probe in it): ``allow`` on every turn; risk 0.05 (0.12 on a dual-use turn).
* level 0 turn on a harmful trajectory (innocent opener, or a benign follow-up after a refusal): ``allow``; risk
  slightly raised by look-ahead (0.12 + 0.04 per earlier user turn, max 0.3; 0.35 after a refusal). Off-topic
  benign turns (``offtopic``, e.g. the chat before a topic switch) are treated as benign: risk 0.05, ``benign``.
* level 1 (ambiguous / dual-use): on a trajectory that goes on to harm (look-ahead) or where the guard asked a
  probe, the FIRST such turn gets ``probe`` (risk 0.4); later ones ``steer`` (risk 0.55..0.75). After a credible
  probe answer: ``allow`` (``steer`` for high-severity categories), risk 0.2. After an evasion or a refusal (the
  user keeps pushing the same goal, risk >= 0.8): ``refuse``.
  On a trajectory that stays benign: ``allow`` — the student only sees the prefix and learns the mixture.
* level 2 (clear harm): ``refuse`` (risk >= 0.82); ``terminate`` (0.93) if the guard already refused before or
  the user evaded a probe (a second clear-harm attempt).
* level 3 (explicit malicious intent, mass harm, scaling): ``terminate`` (0.97).
* probe answers: credible -> risk x0.3 (min 0.1), ``allow``; evasive -> risk +0.3, ``refuse``, and a second
  evasion ``terminate``; malicious -> ``terminate`` (0.97).
* ``terminate`` is sticky: every later message gets ``terminate``.
* assistant messages: the target is the risk after reading the reply; action ``allow``, or ``refuse`` when the
  reply itself gave harmful help (``reply == "partial_harm"``) on a harmful trajectory (risk +0.1).
* category: the trajectory's category on harmful trajectories (hindsight: where it is heading); on benign ones
  ``benign``, except turns whose risk is >= 0.3 (the probed turn), which carry the topic's category.

Single-turn harmful requests are level 2 (``refuse``) or level 3 (``terminate``); single benign ones ``allow``.
"""

from __future__ import annotations

from typing import Any

LEAK = {"allow": 1.0, "probe": 0.5, "steer": 0.3, "refuse": 0.05, "terminate": 0.0}
FRICTION = {"allow": 0.0, "probe": 0.1, "steer": 0.25, "refuse": 1.0, "terminate": 2.0}
HARM = {0: 0.0, 1: 1.0, 2: 3.0, "repeat": 6.0, 3: 10.0}
HIGH_SEVERITY = frozenset({"cbrn", "weapons_explosives", "malware", "child_exploitation"})
RISK_BENIGN = 0.05
RISK_BENIGN_DUAL = 0.12


def expected_cost(action: str, p_harm: float, harm: float) -> float:
    """The cost model of the module docstring (used for documentation and sanity tests)."""
    return p_harm * harm * LEAK[action] + (1.0 - p_harm) * FRICTION[action]


def cost_optimal_action(p_harm: float, harm: float, allowed: tuple[str, ...] = tuple(LEAK)) -> str:
    """The action of least expected cost (ties go to the milder action)."""
    return min(allowed, key=lambda a: (expected_cost(a, p_harm, harm), list(LEAK).index(a)))


def _r(x: float) -> float:
    return round(min(0.99, max(0.01, x)), 3)


def label_conversation(conv: dict[str, Any]) -> list[dict[str, Any]]:
    """Targets ``[{"message_index", "action", "category", "risk"}]`` for every user and assistant message.

    `conv` has ``label``, ``category`` (optional ``topic``) and annotated ``messages`` (see module docstring);
    missing annotations default to level 0 on benign and level 2 on harmful conversations.
    """
    msgs = conv["messages"]
    harmful = conv["label"] == "harmful"
    cat = conv.get("category", "benign")
    topic = conv.get("topic") or cat
    if topic == "benign" and harmful:
        topic = cat
    has_probe = any(m.get("event", "").startswith("probe_answer") for m in msgs)
    watch = harmful or has_probe  # trajectory that may go harmful (look-ahead / a probe was asked)
    risk = 0.0
    terminated = refused = credible = False
    n_ambiguous = evasions = n_user = 0
    targets: list[dict[str, Any]] = []
    last_offtopic = False

    def category_for(r: float, offtopic: bool = False) -> str:
        if harmful and not (offtopic and r < 0.3):
            return cat
        return topic if (r >= 0.3 and topic != "benign") else "benign"

    for i, m in enumerate(msgs):
        role = m["role"]
        if role not in ("user", "assistant"):
            continue
        if role == "assistant":
            action = "allow"
            if terminated:
                action = "terminate"
            elif harmful and m.get("reply") == "partial_harm":
                action, risk = "refuse", min(0.97, risk + 0.1)
            targets.append({"message_index": i, "action": action, "category": category_for(risk, last_offtopic),
                            "risk": _r(risk if watch else RISK_BENIGN)})
            continue

        last_offtopic = bool(m.get("offtopic"))
        level = int(m.get("level", 2 if harmful else 0))
        event = m.get("event", "")
        if terminated:
            action, risk = "terminate", max(risk, 0.95)
        elif event == "probe_answer:malicious":
            action, risk, terminated = "terminate", 0.97, True
        elif event == "probe_answer:evasive":
            evasions += 1
            if evasions >= 2:
                action, risk, terminated = "terminate", max(risk + 0.2, 0.92), True
            else:
                action, risk = "refuse", min(0.8, max(risk + 0.3, 0.65))
                refused = True
        elif event == "probe_answer:credible":
            credible = True
            action, risk = "allow", max(0.1, risk * 0.3)
        elif level >= 3:
            action, risk, terminated = "terminate", 0.97, True
        elif level == 2:
            if refused or evasions:
                action, risk, terminated = "terminate", 0.93, True
            else:
                action, risk, refused = "refuse", min(0.9, max(0.82, risk + 0.15)), True
        elif level == 1:
            if not watch:
                action, risk = "allow", RISK_BENIGN_DUAL
            elif credible:
                action, risk = ("steer" if topic in HIGH_SEVERITY else "allow"), 0.2
            elif evasions or refused:
                action, risk, refused = "refuse", max(risk, 0.8), True
            elif n_ambiguous == 0 and not refused:
                action, risk = "probe", max(risk, 0.4)
            else:
                action, risk = "steer", min(0.75, max(risk + 0.1, 0.55))
            n_ambiguous += 1
        else:  # level 0
            if not watch or m.get("offtopic"):
                action, risk = "allow", max(RISK_BENIGN, risk * 0.5) if refused else RISK_BENIGN
            elif credible:
                action, risk = "allow", min(risk, 0.15)
            elif refused:
                action, risk = "allow", 0.35
            else:
                action = "allow"
                risk = max(risk * 0.8, min(0.3, 0.12 + 0.04 * n_user)) if harmful else max(RISK_BENIGN, risk * 0.8)
        n_user += 1
        targets.append({"message_index": i, "action": action, "category": category_for(risk, last_offtopic),
                        "risk": _r(risk)})
    return targets


def strip_annotations(messages: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[dict[str, Any] | None]]:
    """Split annotated messages into plain ``{role, content}`` messages and the annotation list (None if none)."""
    plain, notes = [], []
    for m in messages:
        plain.append({"role": m["role"], "content": m["content"]})
        note = {k: m[k] for k in ("level", "event", "reply", "offtopic") if k in m}
        notes.append(note or None)
    return plain, notes
