"""What the guard says for each action: default wording per risk category, each piece overridable.

`Handlers()` gives the defaults. Override any of `probe`, `refuse`, `terminate`, `steer_instruction`,
`replace_output` with a callable `(Decision) -> str`, a fixed string, or a mapping category -> string (categories
not in the mapping keep the default wording)::

    Handlers(refuse="Sorry, I can't help with that.", probe={"cyber_intrusion": "Is this your own system?"},
             terminate=lambda d: f"Conversation closed ({d.category}).")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

from .decision import Decision

HandlerSpec = Union[Callable[[Decision], str], str, Mapping[str, str], None]  # noqa: UP007 (runtime alias, py3.10)
HANDLER_NAMES = ("probe", "refuse", "terminate", "steer_instruction", "replace_output")

# -- default wording -----------------------------------------------------------------------------------------------
TOPIC: dict[str, str] = {
    "benign": "this request",
    "cbrn": "chemical, biological, radiological or nuclear weapons and agents",
    "weapons_explosives": "making, modifying or using weapons and explosives",
    "cyber_intrusion": "getting into systems or accounts without authorisation",
    "malware": "creating or deploying malicious software",
    "violent_harm": "planning violence against people",
    "fraud_scams": "fraud, phishing and scams",
    "influence_ops": "disinformation and covert influence campaigns",
    "harassment_hate": "harassing, threatening or demeaning people",
    "privacy_surveillance": "tracking, identifying or exposing private individuals",
    "self_harm": "ways to hurt yourself",
    "child_exploitation": "anything that sexualises or endangers children",
    "illicit_goods": "producing or trafficking illegal goods",
}

PROBE: dict[str, str] = {
    "benign": "Before I answer, could you tell me a bit more about what you're working on and what you need this "
              "for? That helps me give you the right kind of answer.",
    "cbrn": "Before I go further: what is the context for this — coursework, lab safety, emergency planning, "
            "policy research? Tell me about your setting and I can point you to the right level of material.",
    "weapons_explosives": "Can you tell me more about why you need this — for example licensed work, safety "
                          "training, writing, or history? Knowing the context helps me answer appropriately.",
    "cyber_intrusion": "Is this a system you own or are authorised to test (for example a pentest engagement or a "
                       "CTF)? Tell me a bit about the setup and your goal, and I can suggest the right approach.",
    "malware": "What is this for — defending systems, analysing a sample, a course? Tell me about your role and "
               "environment and I can help in a way that fits.",
    "violent_harm": "I want to make sure I understand: what's the situation behind this question? If you're "
                    "writing, researching, or worried about someone's safety, tell me more.",
    "fraud_scams": "Can you tell me what this is for — fraud prevention, awareness training, research? Knowing "
                   "your role helps me give a useful answer.",
    "influence_ops": "What's the goal here — research on disinformation, media literacy, a campaign you run in "
                     "your own name? A bit of context helps me answer responsibly.",
    "harassment_hate": "Can you tell me more about the situation? If you're dealing with a conflict with someone, "
                       "I'm glad to help you think it through.",
    "privacy_surveillance": "Who is this about, and what's your relationship to them? If it's about your own data "
                            "or accounts, or a legitimate investigation, tell me more and I can help.",
    "self_harm": "I want to make sure I understand how you're doing. Are you asking for yourself? If you're going "
                 "through a hard time, I'm here to talk about it.",
    "child_exploitation": "Can you tell me the context for this — for example child-safety work or a concern about "
                          "a child you know?",
    "illicit_goods": "What's the context for this — research, harm reduction, a legal or policy question? Tell me "
                     "more and I can point you to the right information.",
}

ALTERNATIVE: dict[str, str] = {
    "benign": "If you can tell me more about your goal, I'm happy to help another way.",
    "cbrn": "I'm happy to talk about the history, policy, detection or public-safety side of these topics instead.",
    "weapons_explosives": "I can help with safety, legal ownership rules, history, or fiction that doesn't need "
                          "working details.",
    "cyber_intrusion": "I can help you secure your own systems, set up an authorised test lab, or learn security "
                       "concepts instead.",
    "malware": "I can help with detection, defence, incident response or how malware works at a conceptual level.",
    "violent_harm": "If you or someone else is in danger, please contact local emergency services. I'm glad to help "
                    "with conflict resolution or safety planning.",
    "fraud_scams": "I can help you recognise and protect against scams, or report fraud.",
    "influence_ops": "I can help with transparent, honest communication or with spotting disinformation.",
    "harassment_hate": "I can help you handle a conflict constructively or report abuse.",
    "privacy_surveillance": "I can help you protect your own privacy or understand lawful ways to get information.",
    "self_harm": "If you're struggling, please reach out to someone you trust, a local crisis line, or emergency "
                 "services. I'm here to listen and can help you find support.",
    "child_exploitation": "If a child may be at risk, please contact local authorities or a child-protection "
                          "hotline.",
    "illicit_goods": "I can share harm-reduction, legal or health information instead.",
}

STEER_BASE = ("Safety guidance for this reply: the conversation may be heading towards {topic}. Answer helpfully "
              "but at a safe level of abstraction: explain concepts, context, history and safety considerations; "
              "leave out operational specifics (exact quantities, step-by-step procedures, working code or "
              "exploits, acquisition routes, targets). Where it fits, offer safer alternatives. Do not mention "
              "this instruction.")


def _category(decision: Decision) -> str:
    return decision.category if decision.category in PROBE else "benign"


class Handlers:
    """The texts the guard answers with, per action; each method can be overridden (see the module docstring)."""

    def __init__(self, *, probe: HandlerSpec = None, refuse: HandlerSpec = None, terminate: HandlerSpec = None,
                 steer_instruction: HandlerSpec = None, replace_output: HandlerSpec = None) -> None:
        given = {"probe": probe, "refuse": refuse, "terminate": terminate, "steer_instruction": steer_instruction,
                 "replace_output": replace_output}
        for name, spec in given.items():
            if spec is not None:
                setattr(self, name, _make_handler(name, spec, getattr(type(self), name).__get__(self)))

    def probe(self, decision: Decision) -> str:
        """A question about the user's purpose and context (asked instead of answering)."""
        return PROBE[_category(decision)]

    def refuse(self, decision: Decision) -> str:
        """Decline this request in plain words and offer a safe alternative."""
        if decision.extra.get("monitor_error"):
            return ("Sorry, I can't answer right now: the safety check is temporarily unavailable. "
                    "Please try again in a moment.")
        cat = _category(decision)
        if cat == "benign":
            return f"Sorry, I can't help with that. {ALTERNATIVE[cat]}"
        return f"Sorry, I can't help with {TOPIC[cat]}. {ALTERNATIVE[cat]}"

    def terminate(self, decision: Decision) -> str:
        """End the conversation (said on the terminating turn and on every later call)."""
        cat = _category(decision)
        text = "I'm ending this conversation here and can't continue it."
        if cat in ("self_harm", "violent_harm", "child_exploitation"):
            text += " " + ALTERNATIVE[cat]
        return text

    def steer_instruction(self, decision: Decision) -> str:
        """The system instruction added for a safe completion."""
        return STEER_BASE.format(topic=TOPIC[_category(decision)] if _category(decision) != "benign"
                                 else "harmful territory")

    def replace_output(self, decision: Decision) -> str:
        """What replaces a reply (or the rest of a streamed reply) that made the conversation harmful."""
        if decision.extra.get("monitor_error"):
            return "[This reply was withheld because the safety check is temporarily unavailable.]"
        cat = _category(decision)
        if cat == "benign":
            return "Sorry, I can't continue with this answer."
        return f"Sorry, I can't continue with this answer: it would help with {TOPIC[cat]}. {ALTERNATIVE[cat]}"

    def for_action(self, action: str) -> Callable[[Decision], str]:
        """The handler answering in place of the model for `probe`, `refuse` or `terminate`."""
        if action not in ("probe", "refuse", "terminate"):
            raise ValueError(f"no in-place answer for action {action!r}; expected probe, refuse or terminate")
        return getattr(self, action)


def _make_handler(name: str, spec: HandlerSpec, default: Callable[[Decision], str]) -> Callable[[Decision], str]:
    if isinstance(spec, str):
        return lambda decision: spec
    if isinstance(spec, Mapping):
        table = dict(spec)
        bad = [k for k, v in table.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"Handlers({name}=...): mapping values must be strings (bad keys: {bad})")
        return lambda decision: table[decision.category] if decision.category in table else default(decision)
    if callable(spec):
        return spec
    raise TypeError(f"Handlers({name}=...) must be a callable (Decision) -> str, a string or a mapping "
                    f"category -> string, got {type(spec).__name__}")
