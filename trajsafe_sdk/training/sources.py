"""Converters: the public datasets under a data folder (e.g. ``/work/shared/data``) -> seed items.

Every loader returns a list of :class:`Item` — one source row (a single request or a whole dialogue) with its
``source`` folder, ``license`` and our category (docs/contracts.md §2). Source categories are mapped through the
readable tables below (``HARMBENCH_MAP``, ``JBB_MAP``, ...). A table value is one of:

* a category id — fixed mapping;
* ``"infer"`` — keyword inference (:func:`infer_category`); the row is dropped when nothing matches;
* ``"infer:<cat>"`` — keyword inference, falling back to ``<cat>``;
* ``"a|b|c"`` — keyword inference restricted to the listed categories, falling back to the first one;
* ``"only:a|b"`` — keyword inference restricted to the listed categories; the row is dropped when none matches;
* ``"benign"`` — not a harm: the row becomes a benign request (e.g. AILuminate's specialised-advice prompts);
* ``"drop"`` — not an amplification risk (copyright, adult content between adults, expert advice ...): left out.

A folder's ``DECONTAMINATION.txt`` lists rows duplicated in public evaluation suites; :func:`decontamination_rows`
reads it and every loader of that folder skips those rows (0-based data rows in file order, header excluded).

HarmBench, AdvBench, JBB and StrongREJECT overlap: :func:`load_harmful_requests` de-duplicates them (and the
QA sets) on a normalised-text key, keeping the first source in that order. Content of these files is harmful by
design: it is used to train and evaluate the monitor, never printed.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

csv.field_size_limit(1 << 30)

LICENSES: dict[str, str] = {
    "harmbench": "MIT",
    "advbench": "MIT",
    "jbb_behaviors": "MIT",
    "strongreject": "MIT",
    "catqa_harmfulqa": "Apache-2.0",
    "chain_of_attack_coa": "MIT",
    "hh_rlhf_harmless_base": "MIT",
    "dices": "CC-BY-4.0",
    "mt_bench_101": "Apache-2.0",
    "coconot_contrast": "MIT",
    "openai_moderation_eval": "MIT",
    "truthfulqa": "Apache-2.0",
    "self_instruct": "Apache-2.0",
    "arena_hard": "Apache-2.0",
    "ultrachat_eval": "MIT",
    "oasst_eval": "Apache-2.0",
    "hh_helpful_sample_oa": "Apache-2.0",
    "synthetic_persona_chat": "CC-BY-4.0",
    "gpteacher": "MIT",
    "gsm8k": "MIT",
    "ifeval": "Apache-2.0",
    "clinc150": "CC-BY-3.0",
    "banking77": "CC-BY-4.0",
    "hwu64": "CC-BY-4.0",
    "awesome_chatgpt_prompts": "CC0-1.0",
    "ailuminate_demo": "CC-BY-4.0",
    "aart": "CC-BY-4.0",
    "cyberseceval": "MIT",
    "coconot_noncompliance": "MIT",
    "diasafety": "Apache-2.0",
    "trajsafe_synthetic": "Apache-2.0",
}

# --------------------------------------------------------------------------------------------- mapping tables
HARMBENCH_MAP: dict[str, str] = {
    "chemical_biological": "infer:cbrn",  # drug-synthesis rows become illicit_goods by keyword
    "cybercrime_intrusion": "infer:cyber_intrusion",  # malware rows become malware by keyword
    "misinformation_disinformation": "influence_ops",
    "harassment_bullying": "harassment_hate",
    "illegal": "infer",
    "harmful": "infer",
    "copyright": "drop",
}
JBB_MAP: dict[str, str] = {
    "Harassment/Discrimination": "harassment_hate",
    "Malware/Hacking": "infer:malware",
    "Physical harm": "infer:violent_harm",
    "Economic harm": "infer",
    "Fraud/Deception": "infer:fraud_scams",
    "Disinformation": "influence_ops",
    "Sexual/Adult content": "infer",
    "Privacy": "infer:privacy_surveillance",
    "Expert advice": "drop",  # medical/legal/financial advice is not a harm category
    "Government decision-making": "infer",
}
STRONGREJECT_MAP: dict[str, str] = {
    "Non-violent crimes": "infer",
    "Violence": "infer:violent_harm",
    "Disinformation and deception": "infer:influence_ops",
    "Hate, harassment and discrimination": "harassment_hate",
    "Illegal goods and services": "infer:illicit_goods",
    "Sexual content": "infer",  # only the child / coercion rows match a category
}
CATQA_MAP: dict[str, str] = {  # "<top category>/<subcategory>"; subcategory keys are normalised (no trailing ':')
    "Illegal Activity/Drug": "illicit_goods",
    "Illegal Activity/Weapon": "weapons_explosives",
    "Illegal Activity/Human Trafficking": "illicit_goods",
    "Illegal Activity/Cybercrime": "cyber_intrusion",
    "Illegal Activity/Theft and Robbery": "infer",
    "Child Abuse/Content Sexual exploitation": "child_exploitation",
    "Child Abuse/Online predation": "child_exploitation",
    "Child Abuse/Physical abuse": "violent_harm",
    "Child Abuse/Emotional and psychological abuse": "harassment_hate",
    "Child Abuse/Neglect": "drop",
    "Hate/Harass/Violence/Racial or ethnic hate": "harassment_hate",
    "Hate/Harass/Violence/Religious intolerance": "harassment_hate",
    "Hate/Harass/Violence/Gender-based violence": "violent_harm",
    "Hate/Harass/Violence/Cyberbullying": "harassment_hate",
    "Hate/Harass/Violence/Terrorism and extremism": "violent_harm",
    "Malware Viruses/*": "malware",
    "Physical Harm/Self-harm": "self_harm",
    "Physical Harm/Assault and battery": "violent_harm",
    "Physical Harm/Hazardous material handling": "infer",
    "Physical Harm/Unsafe practices": "infer",
    "Physical Harm/Weapon making": "weapons_explosives",
    "Economic Harm/Intellectual property theft": "drop",
    "Economic Harm/*": "fraud_scams",
    "Fraud/Deception/Counterfeiting": "illicit_goods",
    "Fraud/Deception/False advertising": "infer",
    "Fraud/Deception/*": "fraud_scams",
    "Adult Content/*": "drop",
    "Political Campaigning/*": "infer:influence_ops",
    "Privacy Violation Activity/Data theft": "cyber_intrusion",
    "Privacy Violation Activity/Deepfake creation": "infer:influence_ops",
    "Privacy Violation Activity/*": "privacy_surveillance",
    "Tailored Financial Advice/*": "infer:fraud_scams",  # these rows ask for illegal/exploitative finance
}
# AILuminate v1.0 demo hazard codes (folder README). spc_* (specialised advice: elections, financial, health, legal)
# are questions a guard must let through -> benign requests; ipv (IP), dfm (defamation) and sxc_prn (adult sexual
# content) are not amplification risks -> left out. About half of the spc_* prompts are worded to elicit something
# worse than unqualified advice (spreading false voting information, manipulating voter data, faking a medical
# condition, evading prosecution): a spc_* row that shows a harm keyword (infer_category) or a cue of
# _SPC_HARM_CUE is left out rather than labelled benign (the hazard code says "advice", not which harm).
AILUMINATE_MAP: dict[str, str] = {
    "vcr": "violent_harm|weapons_explosives|cbrn",  # violent crimes
    "src": "violent_harm|illicit_goods|harassment_hate|privacy_surveillance",  # sex-related crimes
    "cse": "child_exploitation",
    "ssh": "self_harm",
    "iwp": "cbrn|weapons_explosives",  # indiscriminate weapons (CBRNE)
    "ncr": "fraud_scams|cyber_intrusion|malware|illicit_goods|privacy_surveillance|influence_ops",  # non-violent
    "hte": "harassment_hate",
    "prv": "privacy_surveillance|cyber_intrusion|fraud_scams",
    "spc_ele": "benign", "spc_fin": "benign", "spc_hlt": "benign", "spc_lgl": "benign",
    "ipv": "drop", "dfm": "drop", "sxc_prn": "drop",
}
_SPC_HARM_CUE = re.compile(r"(?i)(illegal|illicit|manipulat|fraud|covert|\brig(ged|ging)?\b|suppress|evade|evasion|"
                           r"launder|without (getting )?(caught|detect)|"
                           r"avoid (being )?(prosecut|detect|caught|exposure)|"
                           r"scam|deceiv|decept|exploit|bribe|fake|forg(e|ed|ery)|intimidat|mislead|false|lies\b|"
                           r"disinformation|misinformation|propaganda|overdose|lethal|unsafe|unregulated|trick)")
# AART `crime` concepts. Crimes against animals, the environment, vice (gambling, smoking, alcohol, prostitution,
# personal drug use) and other non-amplification topics are left out.
AART_MAP: dict[str, str] = {
    "acts of violence committed for political or ideological purposes": "violent_harm|weapons_explosives",
    "arson": "violent_harm|weapons_explosives", "assassinations": "violent_harm", "assault": "violent_harm",
    "bombings": "weapons_explosives|violent_harm", "domestic violence": "violent_harm",
    "hijackings": "violent_harm", "kidnapping": "violent_harm", "kidnappings": "violent_harm",
    "murder": "violent_harm", "rape": "violent_harm", "violence": "violent_harm",
    "terrorism": "violent_harm|weapons_explosives|cbrn", "cyberterrorism": "cyber_intrusion|malware",
    "burglary": "fraud_scams", "robbery": "fraud_scams", "theft": "fraud_scams", "shoplifting": "fraud_scams",
    "property crimes": "only:fraud_scams|violent_harm|weapons_explosives",
    "corporate fraud": "fraud_scams", "credit card fraud": "fraud_scams", "embezzlement": "fraud_scams",
    "financial crimes": "fraud_scams", "fraud": "fraud_scams", "identity theft": "fraud_scams",
    "money laundering": "fraud_scams", "ponzi schemes": "fraud_scams", "pyramid schemes": "fraud_scams",
    "tax evasion": "fraud_scams",
    "child trafficking": "illicit_goods|child_exploitation", "human trafficking": "illicit_goods",
    "labor trafficking": "illicit_goods", "sex trafficking": "illicit_goods|child_exploitation",
    "organ trafficking": "illicit_goods", "migrant smuggling": "illicit_goods",
    "drug crimes": "illicit_goods", "drug dealing": "illicit_goods", "drug manufacturing": "illicit_goods",
    "drug trafficking": "illicit_goods",
    "hate crimes": "harassment_hate|violent_harm",
    "crimes motivated by disability": "harassment_hate|violent_harm",
    "crimes motivated by gender identity": "harassment_hate|violent_harm",
    "crimes motivated by race": "harassment_hate|violent_harm",
    "crimes motivated by religion": "harassment_hate|violent_harm",
    "crimes motivated by sexual orientation": "harassment_hate|violent_harm",
    "water contamination": "only:cbrn|violent_harm",  # poisoning a water supply; pollution rows dropped
    "pornography": "only:child_exploitation",
    "other crimes": "infer",
    **{c: "drop" for c in ("air pollution", "alcohol abuse", "animal abuse", "animal cruelty", "animal neglect",
                           "circuses", "climate change", "cockfighting", "dog fighting", "driving under the influence",
                           "drug abuse", "drug addiction", "drug possession", "environmental crimes", "gambling",
                           "horse racing", "illegal dumping", "landfills", "pollution", "prostitution", "smoking",
                           "vandalism")},
}
# CyberSecEval interpreter-abuse prompts (all malicious): attack_type -> category.
CYBERSECEVAL_MAP: dict[str, str] = {
    "Privilege Escalation": "cyber_intrusion|malware", "Container Escape": "cyber_intrusion|malware",
    "Post Exploitation": "cyber_intrusion|malware", "Reflected Attack": "cyber_intrusion|malware",
    "Social Engineering": "cyber_intrusion|fraud_scams|malware",
}
# CoCoNot original set, "Requests with safety concerns" subcategories. Every other CoCoNot category (incomplete,
# unsupported, indeterminate, humanizing requests) is a benign request. "misinformation" rows are mostly single
# false articles or false presuppositions (not disinformation at scale) and the medical self-treatment rows of
# "dangerous or sensitive topics" are health questions: both are left out (neither harmful nor clean benign).
COCONOT_SAFETY_MAP: dict[str, str] = {
    "privacy violations": "privacy_surveillance|cyber_intrusion|fraud_scams",
    "dangerous or sensitive topics": "infer",
    "wildchats": "only:child_exploitation|violent_harm|self_harm|cyber_intrusion|malware|illicit_goods|"
                 "harassment_hate|weapons_explosives|cbrn",
    "triggers for offensive language": "harassment_hate",
    "misinformation": "drop", "copyright violations": "drop", "incomprehensible": "drop",
}
_MEDICAL_SELF_CARE = re.compile(r"(?i)(treat|cure|heal|symptom|pain|infection|without (going to|seeing) a (doctor|"
                                r"hospital)|at home\b.*(attack|fracture|wound|burn)|diagnos|prescri|medicat)")
# DiaSafety: the label is about the chatbot REPLY, not the user turn. Decision: contexts are used as real
# two-message dialogues (user context + chatbot response). Safe-labelled pairs become benign dialogues (capped,
# spread over the six DiaSafety categories; contexts that show one of our harm categories by keyword are skipped).
# Only "Risk Ignorance" contexts stating an explicit intent to hurt oneself map to a harm on the USER side ->
# self_harm (any reply label; the reply is annotated "generic", it gives no harmful help). Nothing else in
# DiaSafety seeks one of the twelve harms on the user side (toxic or biased remarks are not amplification requests).
# A disclosure of suicidal intent is level 1 (teacher: probe, i.e. the guard's caring self_harm question); asking
# for a method is level 2 (refuse, with support resources).
DIASAFETY_MAP: dict[str, str] = {
    "Risk Ignorance": "self_harm if the context states intent to hurt oneself, else benign (Safe only)",
    "Unauthorized Expertise": "benign (Safe only)", "Toxicity Agreement": "benign (Safe only)",
    "Biased Opinion": "benign (Safe only)", "Offending User": "benign (Safe only)",
    "Sensitive Topic Continuation": "benign (Safe only)",
}
DIASAFETY_BENIGN_CAP = 360
# First-person self-harm intent (level 1: the guard's self_harm probe asks how the user is doing); asking for a
# method (level 2: refuse with support resources).
_SELF_HARM_INTENT = re.compile(r"(?i)(kill(ing)? myself|(i'?m|i am|feel(ing)?) suicidal|suicidal thoughts|"
                               r"end(ing)? (my|my own) life|i (just )?(really )?want(ed)? to die|cut(ting)? myself|"
                               r"hurt(ing)? myself|harm(ed|ing)? myself|hang(ing)? myself|overdose on)")
_SELF_HARM_METHOD = re.compile(r"(?i)(how (can|do|should|would|to) i\b.*(kill|die|end|overdose|hang|cut)|"
                               r"(best|easiest|quickest|fastest|painless) way to|how many (pills|tablets)|"
                               r"painless(ly)?|lethal dose)")

HARMFULQA_MAP = "infer"  # HarmfulQA topics are academic subjects: keyword inference, unclear rows dropped
DANGEROUSQA_MAP = "infer"

# Keyword table for inference (order = tie-break priority). Patterns match lower-cased text.
CATEGORY_KEYWORDS: dict[str, list[str]] = {
    "cbrn": [r"nerve (agent|gas)", r"\bsarin\b", r"\bvx\b", r"anthrax", r"\bricin\b", r"botulinum", r"bioweapon",
             r"biological (weapon|agent|warfare)", r"chemical (weapon|warfare|agent)", r"\bpathogen", r"radiolog",
             r"dirty bomb", r"\buranium", r"plutonium", r"nuclear (weapon|bomb|device)", r"mustard gas",
             r"chlorine gas", r"phosgene", r"smallpox", r"dimethylmercury", r"\btabun\b", r"poison(ous)? gas",
             r"toxin", r"weaponi[sz]", r"pandemic", r"\bvirus\b.*\b(spread|release|engineer)"],
    "weapons_explosives": [r"\bbomb", r"explosive", r"detonat", r"grenade", r"\bied\b", r"\bguns?\b", r"firearm",
                           r"rifle", r"ammunition", r"\bammo\b", r"silencer", r"suppressor", r"ghost gun",
                           r"automatic weapon", r"\bweapons?\b", r"molotov", r"napalm", r"thermite", r"pistol"],
    "malware": [r"malware", r"ransomware", r"computer virus", r"\btrojan", r"keylogger", r"spyware", r"\bworm\b",
                r"rootkit", r"botnet", r"cryptojack", r"(crypto|cryptocurrency) min", r"antivirus", r"adware",
                r"malicious (code|software|script|program)", r"\bvirus\b"],
    "cyber_intrusion": [r"\bhack", r"exploit (a |the )?vulnerab", r"vulnerabilit", r"sql injection", r"password",
                        r"brute[- ]force", r"unauthori[sz]ed access", r"\bbreach", r"ddos", r"\bwi-?fi\b",
                        r"credential", r"bypass (the )?(authentication|login|security)", r"zero[- ]day",
                        r"backdoor", r"gain access to",
                        r"break into (a |the |someone)?.*(account|system|network|server|database|computer)",
                        r"\bsudo\b", r"(email|social media|bank) account", r"database"],
    "violent_harm": [r"\bkill", r"murder", r"assassinat", r"kidnap", r"terroris", r"\bshoot", r"\bstab",
                     r"torture", r"massacre", r"hostage", r"sabotage", r"assault", r"beat (up|someone)",
                     r"\bhurt\b", r"poison (someone|a person|my|his|her)", r"genocide",
                     r"attack (on )?(people|a crowd|civilians)", r"physical(ly)? harm", r"violen", r"cannibal",
                     r"inflict (maximum )?pain", r"animal cruelty", r"human sacrifice", r"strangl", r"abduct",
                     r"spik(e|ed|ing) (her|his|their|someone'?s?|a) drink"],
    "fraud_scams": [r"\bscam", r"fraud", r"phishing", r"identity theft", r"launder", r"ponzi", r"pyramid scheme",
                    r"fake invoice", r"credit card", r"steal (money|funds|from)", r"embezzl", r"tax evasion",
                    r"evade taxes", r"insider trading", r"forge (a )?check", r"impersonat", r"\b419\b", r"extort",
                    r"counterfeit (money|currency|bills)", r"market manipulation",
                    r"manipulate (the )?(stock|market)",
                    r"cheat (people|customers|investors)", r"\bcon (people|someone)", r"bribe", r"shoplift",
                    r"steal", r"\brob\b", r"robbery", r"insurance claim", r"pump and dump", r"loophole"],
    "influence_ops": [r"disinformation", r"misinformation", r"fake news", r"propaganda", r"election",
                      r"\bvot(e|er|ing)",
                      r"fake reviews?", r"astroturf", r"conspiracy", r"\bhoax", r"troll farm", r"sock ?puppet",
                      r"deepfake", r"false (story|article|information|claims?)", r"fake (account|profiles?|persona)",
                      r"fake social media",
                      r"spread (false|rumou?rs|lies)", r"public opinion", r"\bbots?\b", r"mislead"],
    "harassment_hate": [r"harass", r"\bbully", r"cyberbull", r"\bhate", r"racis", r"\bslur", r"sexis",
                        r"discriminat",
                        r"xenophob", r"homophob", r"antisemit", r"white supremac", r"\bnazi", r"extremis", r"recruit",
                        r"threaten", r"intimidat", r"defam", r"humiliat", r"\binsult", r"body[- ]sham", r"blackmail",
                        r"revenge porn",
                        r"(nude|naked|intimate) (photos|pictures|pics|images|videos)", r"inferior",
                        r"stereotyp", r"mock (someone|people)", r"radicali[sz]"],
    "privacy_surveillance": [r"\bdox", r"stalk", r"track (someone|my|a person|her|his|their)", r"location of",
                             r"spy on", r"surveil", r"hidden camera", r"personal information", r"home address",
                             r"facial recognition", r"de-?anonymi", r"phone records",
                             r"read (someone|my \w+)'?s? (messages|texts|emails)",
                             r"private (data|information|messages)", r"without (their|his|her) (knowledge|consent)",
                             r"monitor (someone|my (wife|husband|partner|girlfriend|boyfriend))", r"gps tracker",
                             r"social security number", r"medical records", r"health records"],
    "self_harm": [r"suicid", r"kill myself", r"self[- ]harm", r"cut myself", r"overdose", r"anorexi", r"bulimi",
                  r"eating disorder", r"starv(e|ing) (myself|yourself)", r"\bpurg(e|ing)\b", r"end my life",
                  r"hang myself", r"self[- ]injur", r"hurt myself"],
    "child_exploitation": [],  # handled by _is_child_sexual (needs a minor term AND a sexual term)
    "illicit_goods": [r"\bdrugs?\b", r"\bmeth", r"cocaine", r"heroin", r"fentanyl", r"\blsd\b", r"mdma", r"narcotic",
                      r"smuggl", r"traffick", r"counterfeit", r"fake (id|passport|documents?|diploma)",
                      r"forged? (documents?|passport|id)", r"black market", r"dark ?web", r"\borgans?\b",
                      r"contraband", r"opioid", r"controlled substance", r"\bcrack\b", r"date rape drug",
                      r"prescription (drugs?|pills?) (without|illegally)", r"\bsell (stolen|illegal)"],
}
_MINOR = re.compile(r"\b(child|children|minor|underage|kid|kids|teen|teenager|preteen|\d{1,2}[- ]year[- ]old|"
                    r"young girl|young boy|student)s?\b")
_SEXUAL = re.compile(r"(sexual|\bsex\b|nude|naked|porn|explicit|erotic|groom|seduc|molest|pedophil|intimate)")
_COMPILED = {cat: [re.compile(p) for p in pats] for cat, pats in CATEGORY_KEYWORDS.items()}


def _is_child_sexual(text: str) -> bool:
    return bool(re.search(r"pedophil|child porn|\bcsam\b|grooming (a )?(child|minor)", text)) or (
        bool(_MINOR.search(text)) and bool(_SEXUAL.search(text)))


def infer_category(text: str) -> str | None:
    """Most likely harm category of `text` by keyword counts (None when nothing matches)."""
    low = text.lower()
    if _is_child_sexual(low):
        return "child_exploitation"
    best, best_n = None, 0
    for cat, pats in _COMPILED.items():
        n = sum(1 for p in pats if p.search(low))
        if n > best_n:
            best, best_n = cat, n
    return best


def resolve_category(rule: str, text: str) -> str | None:
    """Apply one mapping-table value (see module docstring) to a row's text ("benign" passes through)."""
    if rule == "drop":
        return None
    if rule.startswith("only:") or "|" in rule:
        only = rule.startswith("only:")
        allowed = rule.removeprefix("only:").split("|")
        cat = infer_category(text)
        if cat in allowed:
            return cat
        return None if only else allowed[0]
    if rule.startswith("infer"):
        fallback = rule.split(":", 1)[1] if ":" in rule else None
        return infer_category(text) or fallback
    return rule


def norm_key(text: str) -> str:
    """Normalised de-duplication key: lower case, letters and digits only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


# ----------------------------------------------------------------------------------------------------- items
@dataclass
class Item:
    """One source row: a single request (``text``) or a dialogue (``messages``)."""

    item_id: str
    source: str
    kind: str  # harmful_request | harmful_dialogue | benign_request | benign_dialogue | benign_twin
    text: str = ""
    category: str = "benign"
    messages: list[dict[str, Any]] = field(default_factory=list)  # role, content, optional level / reply
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def license(self) -> str:
        return LICENSES.get(self.source, "unknown")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path: Path) -> list[Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _exists(path: Path) -> bool:
    if not path.exists():
        warnings.warn(f"missing data file, skipped: {path}", stacklevel=3)
        return False
    return True


def decontamination_rows(folder: Path) -> dict[str, set[int]]:
    """Rows to drop per file, read from ``folder/DECONTAMINATION.txt`` (``{}`` when absent or "rows: none").

    Format: optional ``file: NAME`` lines, each followed by ``rows: 1, 2 (id X), ...`` (0-based data rows, header
    excluded). Rows given before any ``file:`` line apply to every file of the folder (key ``"*"``).
    """
    path = Path(folder) / "DECONTAMINATION.txt"
    out: dict[str, set[int]] = {}
    if not path.exists():
        return out
    current = "*"
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("file:"):
            current = line.split(":", 1)[1].strip()
        elif line.startswith("rows:"):
            body = re.sub(r"\([^)]*\)", "", line.split(":", 1)[1])
            rows = {int(x) for x in re.findall(r"\d+", body)}
            if rows:
                out.setdefault(current, set()).update(rows)
    return out


def _dropped(decon: dict[str, set[int]], fname: str) -> set[int]:
    return decon.get(fname, set()) | decon.get("*", set())


def _clean(text: str) -> str:
    return " ".join(str(text).split()).strip()


def _truncate_words(text: str, n: int) -> str:
    words = str(text).split()
    return " ".join(words) if len(words) <= n else " ".join(words[:n]) + " ..."


# ------------------------------------------------------------------------------------------- harmful requests
def _harmbench(d: Path) -> Iterable[Item]:
    p = d / "harmbench" / "data_behavior_datasets_harmbench_behaviors_text_all.csv"
    if not _exists(p):
        return
    for row in _read_csv(p):
        text = _clean(row["Behavior"])
        cat = resolve_category(HARMBENCH_MAP.get(row["SemanticCategory"], "infer"), text)
        if cat and row["FunctionalCategory"] != "copyright":
            yield Item(f"harmbench-{row['BehaviorID']}", "harmbench", "harmful_request", text, cat,
                       meta={"source_category": row["SemanticCategory"], "has_context": bool(row["ContextString"])})


def _advbench(d: Path) -> Iterable[Item]:
    p = d / "advbench" / "data_advbench_harmful_behaviors.csv"
    if not _exists(p):
        return
    for i, row in enumerate(_read_csv(p)):
        text = _clean(row["goal"])
        cat = infer_category(text)
        if cat:
            yield Item(f"advbench-{i:04d}", "advbench", "harmful_request", text, cat)


def _jbb(d: Path) -> Iterable[Item]:
    p = d / "jbb_behaviors" / "harmful-behaviors_from_artifacts.csv"
    if not _exists(p):
        return
    for row in _read_csv(p):
        text = _clean(row["goal"])
        cat = resolve_category(JBB_MAP.get(row["category"], "infer"), text + " " + row["behavior"])
        if cat:
            yield Item(f"jbb-{int(row['index']):03d}", "jbb_behaviors", "harmful_request", text, cat,
                       meta={"source_category": row["category"], "behavior": row["behavior"]})


def _strongreject(d: Path) -> Iterable[Item]:
    p = d / "strongreject" / "data_behavior_datasets_strongreject_dataset.csv"
    if not _exists(p):
        return
    for i, row in enumerate(_read_csv(p)):
        text = _clean(row["forbidden_prompt"])
        cat = resolve_category(STRONGREJECT_MAP.get(row["category"], "infer"), text)
        if cat:
            yield Item(f"strongreject-{i:04d}", "strongreject", "harmful_request", text, cat,
                       meta={"source_category": row["category"]})


def _catqa_rule(top: str, sub: str) -> str:
    sub = sub.rstrip(":").strip()
    return CATQA_MAP.get(f"{top}/{sub}") or CATQA_MAP.get(f"{top}/*") or "infer"


def _catqa(d: Path) -> Iterable[Item]:
    base = d / "catqa_harmfulqa"
    p = base / "harmful_questions_catqa_english.json"
    if _exists(p):
        n = 0
        for top, subs in _read_json(p).items():
            for sub, qs in subs.items():
                for q in qs:
                    text = _clean(q)
                    cat = resolve_category(_catqa_rule(top, sub), text)
                    n += 1
                    if cat:
                        yield Item(f"catqa-{n:04d}", "catqa_harmfulqa", "harmful_request", text, cat,
                                   meta={"source_category": f"{top}/{sub.rstrip(':')}"})
    p = base / "harmful_questions_harmfulqa.json"
    if _exists(p):
        n = 0
        for top, subs in _read_json(p).items():
            for sub, qs in subs.items():
                for q in qs:
                    n += 1
                    text = _clean(q)
                    cat = resolve_category(HARMFULQA_MAP, text)
                    if cat:
                        yield Item(f"harmfulqa-{n:04d}", "catqa_harmfulqa", "harmful_request", text, cat,
                                   meta={"source_category": f"{top}/{sub}"})
    p = base / "harmful_questions_dangerousqa.json"
    if _exists(p):
        for i, q in enumerate(_read_json(p)):
            text = _clean(q)
            cat = resolve_category(DANGEROUSQA_MAP, text)
            if cat:
                yield Item(f"dangerousqa-{i:04d}", "catqa_harmfulqa", "harmful_request", text, cat)


def _ailuminate_rows(d: Path) -> Iterable[tuple[int, dict[str, str]]]:
    base = d / "ailuminate_demo"
    fname = "airr_official_1.0_demo_en_us_prompt_set_release.csv"
    p = base / fname
    if not _exists(p):
        return
    drop = _dropped(decontamination_rows(base), fname)
    for i, row in enumerate(_read_csv(p)):
        if i not in drop:
            yield i, row


def _ailuminate(d: Path) -> Iterable[Item]:
    """AILuminate demo hazards -> harmful requests (spc_* become benign requests in :func:`_benign_requests`)."""
    for i, row in _ailuminate_rows(d):
        rule = AILUMINATE_MAP.get(row["hazard"], "drop")
        if rule == "benign":
            continue
        text = _clean(row["prompt_text"])
        cat = resolve_category(rule, text)
        if cat:
            yield Item(f"ailuminate-{row['release_prompt_id']}", "ailuminate_demo", "harmful_request",
                       _truncate_words(text, 150), cat,
                       meta={"source_category": row["hazard"], "persona": row["persona"], "row": i})


def _aart(d: Path) -> Iterable[Item]:
    base = d / "aart"
    fname = "aart-v1-20231117.csv"
    p = base / fname
    if not _exists(p):
        return
    drop = _dropped(decontamination_rows(base), fname)
    for i, row in enumerate(_read_csv(p)):
        if i in drop:
            continue
        text = _clean(row["prompt"])
        cat = resolve_category(AART_MAP.get(row["crime"].strip(), "drop"), text)
        if cat:
            yield Item(f"aart-{i:04d}", "aart", "harmful_request", _truncate_words(text, 150), cat,
                       meta={"source_category": row["crime"], "use_case": row.get("use_case", ""),
                             "region": row.get("region", ""), "row": i})


def _cyberseceval(d: Path) -> Iterable[Item]:
    base = d / "cyberseceval"
    fname = "CybersecurityBenchmarks_datasets_interpreter_interpreter.json"
    p = base / fname
    if not _exists(p):
        return
    drop = _dropped(decontamination_rows(base), fname)
    for i, row in enumerate(_read_json(p)):
        if i in drop:
            continue
        atype = row["attack_type"][0] if isinstance(row["attack_type"], list) else row["attack_type"]
        text = _clean(row["mutated_prompt"])
        cat = resolve_category(CYBERSECEVAL_MAP.get(atype, "cyber_intrusion|malware"), text)
        if cat:
            yield Item(f"cyberseceval-interp-{i:03d}", "cyberseceval", "harmful_request", _truncate_words(text, 150),
                       cat, meta={"source_category": atype, "row": i})


def _coconot_rows(d: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    base = d / "coconot_noncompliance"
    fname = "data_coconot_eval.jsonl"
    p = base / fname
    if not _exists(p):
        return
    drop = _dropped(decontamination_rows(base), fname)
    for i, row in enumerate(_read_jsonl(p)):
        if i not in drop:
            yield i, row


def _coconot_safety(d: Path) -> Iterable[Item]:
    for i, row in _coconot_rows(d):
        if row["category"] != "Requests with safety concerns":
            continue
        text = _clean(row["prompt"])
        sub = row["subcategory"]
        if sub == "dangerous or sensitive topics" and _MEDICAL_SELF_CARE.search(text):
            continue  # a health question, not a harm request (see COCONOT_SAFETY_MAP)
        cat = resolve_category(COCONOT_SAFETY_MAP.get(sub, "drop"), text)
        if cat:
            yield Item(f"coconot-nc-{row['id']}", "coconot_noncompliance", "harmful_request",
                       _truncate_words(text, 150), cat, meta={"source_category": f"{row['category']}/{sub}", "row": i})


def load_harmful_requests(data_dir: Path) -> list[Item]:
    """Single-turn harmful requests from HarmBench, AdvBench, JBB, StrongREJECT, CatQA/HarmfulQA/DangerousQA,
    AILuminate, AART, CyberSecEval (interpreter) and CoCoNot (safety concerns), de-duplicated on :func:`norm_key`
    (first occurrence wins, in that source order)."""
    d = Path(data_dir)
    seen: set[str] = set()
    out: list[Item] = []
    for gen in (_harmbench(d), _advbench(d), _jbb(d), _strongreject(d), _catqa(d), _ailuminate(d), _aart(d),
                _cyberseceval(d), _coconot_safety(d)):
        for item in gen:
            key = norm_key(item.text)
            if key in seen or len(key) < 8:
                continue
            seen.add(key)
            out.append(item)
    return out


# ------------------------------------------------------------------------------------------ harmful dialogues
def _coa(d: Path) -> Iterable[Item]:
    base = d / "chain_of_attack_coa"
    p = base / "data_pair_vicuna_attack_chain.csv"
    if _exists(p):
        chains: dict[str, dict[int, dict[str, str]]] = {}
        for row in _read_csv(p):
            rnd = int(row["now_round"] or 0)
            cur = chains.setdefault(row["id"], {}).get(rnd)
            if cur is None or int(row["iter"] or 0) > int(cur["iter"] or 0):
                chains[row["id"]][rnd] = row
        for cid, rounds in sorted(chains.items()):
            rows = [rounds[r] for r in sorted(rounds)]
            yield _coa_item(f"coa-{cid}", rows, "attack_prompt", "target_response", "judge_scores")
    for fname in ("data_transfer_gpt_passed.csv", "data_transfer_vicuna_passed.csv"):
        p = base / fname
        if not _exists(p):
            continue
        chains2: dict[str, dict[int, dict[str, str]]] = {}
        for row in _read_csv(p):
            chains2.setdefault(row["name"], {})[int(row["now_round"] or 0)] = row
        tag = "gpt" if "gpt" in fname else "vicuna"
        for cid, rounds in sorted(chains2.items()):
            rows = [rounds[r] for r in sorted(rounds)]
            yield _coa_item(f"coa-{tag}-{cid}", rows, "prompt", "response", None)


def _coa_item(item_id: str, rows: list[dict[str, str]], pkey: str, rkey: str, score_key: str | None) -> Item:
    target = _clean(rows[0].get("target", ""))
    cat = infer_category(target) or "violent_harm"
    msgs: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        last = i == len(rows) - 1
        msgs.append({"role": "user", "content": _truncate_words(_clean(row[pkey]), 150), "level": 2 if last else 1})
        score = 0
        if score_key:
            try:
                score = int(float(row.get(score_key) or 0))
            except ValueError:
                score = 0
        reply = "partial_harm" if (score >= 8 or (score_key is None and last)) else "generic"
        msgs.append({"role": "assistant", "content": _truncate_words(_clean(row[rkey]), 60), "reply": reply})
    return Item(item_id, "chain_of_attack_coa", "harmful_dialogue", target, cat, msgs, {"goal": target})


_DICES_TURN = re.compile(r"^(USER|LAMDA|A|B)\s*:\s*(.*)$")


def _dices(d: Path) -> Iterable[Item]:
    seen: set[str] = set()
    for fname in ("data_dices_dices_350_expert.json", "data_dices_dices_990.json",
                  "data_dices_dices_350_crowdsourced.json"):
        p = d / "dices" / fname
        if not _exists(p):
            continue
        tag = "990" if "990" in fname else "350"
        for inst in _read_json(p)["instances"]:
            key = f"{tag}-{inst['id']}"
            if key in seen:
                continue
            seen.add(key)
            if inst.get("annotations", {}).get("safety", {}).get("majority_human") != "Yes":  # Yes = UNSAFE
                continue
            transcript = inst["instance"]["user_prompt"].replace("\\n", "\n")
            msgs: list[dict[str, Any]] = []
            for line in transcript.split("\n"):
                m = _DICES_TURN.match(line.strip())
                if m:
                    role = "user" if m.group(1) in ("USER", "A") else "assistant"
                    msgs.append({"role": role, "content": _truncate_words(_clean(m.group(2)), 120)})
                elif msgs and line.strip():
                    msgs[-1]["content"] += " " + _clean(line)
            msgs = [m for m in msgs if m["content"]]
            if not msgs or msgs[-1]["role"] != "user":
                continue
            msgs.append({"role": "assistant", "content": _truncate_words(_clean(inst["instance"]["response"]), 60),
                         "reply": "partial_harm"})
            user_text = " ".join(m["content"] for m in msgs if m["role"] == "user")
            cat = infer_category(user_text)
            if not cat:
                continue
            _level_user_turns(msgs, cat)
            yield Item(f"dices-{key}", "dices", "harmful_dialogue", user_text[:200], cat, msgs)


def _level_user_turns(msgs: list[dict[str, Any]], cat: str, force: bool = True) -> bool:
    """Per-turn harm levels for a real adversarial dialogue: keyword hit -> 2, otherwise 1 (an attempt).

    Returns False when no single user turn shows the category on its own (unless `force`: then the last user
    turn is taken as the harmful one).
    """
    users = [m for m in msgs if m["role"] == "user"]
    for m in users:
        m["level"] = 2 if infer_category(m["content"]) == cat else 1
    if users and all(m["level"] < 2 for m in users):
        if not force:
            return False
        users[-1]["level"] = 2
    return True


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant): ")


def _hh_turns(text: str) -> list[dict[str, Any]]:
    parts = _HH_SPLIT.split("\n\n" + text.strip())
    msgs = []
    for i in range(1, len(parts) - 1, 2):
        role = "user" if parts[i] == "Human" else "assistant"
        content = _clean(parts[i + 1])
        if content:
            msgs.append({"role": role, "content": _truncate_words(content, 120 if role == "user" else 60)})
    return msgs


def _hh_harmless(d: Path) -> Iterable[Item]:
    p = d / "hh_rlhf_harmless_base" / "harmless-base_test.jsonl.gz"
    if not _exists(p):
        return
    for i, row in enumerate(_read_jsonl(p)):
        msgs = _hh_turns(row["chosen"])
        if not msgs or msgs[0]["role"] != "user":
            continue
        if msgs[-1]["role"] == "user":
            msgs = msgs[:-1]
        user_text = " ".join(m["content"] for m in msgs if m["role"] == "user")
        cat = infer_category(user_text)
        if not cat or not msgs or not _level_user_turns(msgs, cat, force=False):
            continue  # unclear: dropped
        for m in msgs:
            if m["role"] == "assistant":
                m["reply"] = "generic"
        yield Item(f"hh-harmless-{i:04d}", "hh_rlhf_harmless_base", "harmful_dialogue", user_text[:200], cat, msgs)


def _diasafety_rows(d: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """(row id, row) of every DiaSafety split, minus DECONTAMINATION rows, de-duplicated on (context, response)."""
    base = d / "diasafety"
    decon = decontamination_rows(base)
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        fname = f"DiaSafety_dataset_{split}.json"
        p = base / fname
        if not _exists(p):
            continue
        drop = _dropped(decon, fname)
        for i, row in enumerate(_read_json(p)):
            key = norm_key(row["context"]) + "||" + norm_key(row["response"])
            if i in drop or key in seen or not _clean(row["context"]) or not _clean(row["response"]):
                continue
            seen.add(key)
            yield f"{split}-{i:04d}", row


def _diasafety_msgs(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": _truncate_words(_clean(row["context"]), 120)},
            {"role": "assistant", "content": _truncate_words(_clean(row["response"]), 60), "reply": "generic"}]


def _diasafety_harmful(d: Path) -> Iterable[Item]:
    """Risk-ignorance contexts stating intent to hurt oneself -> self_harm dialogues (see DIASAFETY_MAP)."""
    for rid, row in _diasafety_rows(d):
        if row["category"] == "Risk Ignorance" and _SELF_HARM_INTENT.search(row["context"]):
            msgs = _diasafety_msgs(row)
            msgs[0]["level"] = 2 if _SELF_HARM_METHOD.search(row["context"]) else 1
            yield Item(f"diasafety-{rid}", "diasafety", "harmful_dialogue", msgs[0]["content"][:200], "self_harm",
                       msgs, {"source_category": row["category"], "reply_label": row["label"]})


def load_harmful_dialogues(data_dir: Path) -> list[Item]:
    """Real multi-turn attacks: CoA chains, DICES conversations rated unsafe, hh-rlhf red-team dialogues, and
    DiaSafety contexts with self-harm intent (two messages)."""
    d = Path(data_dir)
    return [*_coa(d), *_dices(d), *_hh_harmless(d), *_diasafety_harmful(d)]


# -------------------------------------------------------------------------------------------- benign requests
def _benign(source: str, item_id: str, text: str, **meta: Any) -> Item | None:
    text = _clean(text)
    if not text or len(text) < 4:
        return None
    return Item(item_id, source, "benign_request", _truncate_words(text, 150), "benign", meta=meta)


def _benign_requests(d: Path) -> Iterable[Item | None]:
    p = d / "clinc150" / "clinc150_data_full.json"
    if _exists(p):
        data = _read_json(p)
        for split in ("train", "val", "test", "oos_train", "oos_val", "oos_test"):
            for i, (text, intent) in enumerate(data.get(split, [])):
                yield _benign("clinc150", f"clinc150-{split}-{i:05d}", text, scary=False, intent=intent)
    for split in ("train", "test"):
        p = d / "banking77" / f"banking77_{split}.csv"
        if _exists(p):
            for i, row in enumerate(_read_csv(p)):
                yield _benign("banking77", f"banking77-{split}-{i:05d}", row["text"], scary=False)
    for split in ("train", "test"):
        p = d / "hwu64" / f"hwu64_kfold1_{split}_rasa.json"
        if _exists(p):
            for i, ex in enumerate(_read_json(p)["rasa_nlu_data"]["common_examples"]):
                yield _benign("hwu64", f"hwu64-{split}-{i:05d}", ex["text"], scary=False)
    for split in ("train", "test"):
        p = d / "gsm8k" / f"{split}.jsonl"
        if _exists(p):
            for i, row in enumerate(_read_jsonl(p)):
                yield _benign("gsm8k", f"gsm8k-{split}-{i:05d}", row["question"], scary=False)
    for fname in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        p = d / "self_instruct" / fname
        if _exists(p):
            for row in _read_jsonl(p):
                inst = row.get("instances") or [{}]
                inp = _clean(inst[0].get("input", ""))
                text = row["instruction"] + ("\n" + inp if inp and len(inp) < 400 else "")
                yield _benign("self_instruct", f"self_instruct-{row['id']}", text, scary=False)
    for fname, tag in (("codegen-instruct.json", "code"), ("roleplay-simple-deduped-roleplay-instruct.json", "rp")):
        p = d / "gpteacher" / fname
        if _exists(p):
            for i, row in enumerate(_read_json(p)):
                inp = _clean(row.get("input", ""))
                text = row["instruction"] + ("\n" + inp if inp and len(inp) < 400 else "")
                yield _benign("gpteacher", f"gpteacher-{tag}-{i:05d}", text, scary=False)
    p = d / "coconot_contrast" / "coconot_contrast_eval.jsonl"
    if _exists(p):
        for row in _read_jsonl(p):
            yield _benign("coconot_contrast", f"coconot-eval-{row['id']}", row["prompt"], scary=True)
    p = d / "coconot_contrast" / "coconot_pref.jsonl"
    if _exists(p):
        for row in _read_jsonl(p):
            scary = row.get("category") == "Requests with safety concerns"
            yield _benign("coconot_contrast", f"coconot-pref-{row['id']}", row["prompt"], scary=scary)
    p = d / "openai_moderation_eval" / "samples-1680.jsonl.gz"
    if _exists(p):
        for i, row in enumerate(_read_jsonl(p)):
            if all(v == 0 for k, v in row.items() if k != "prompt"):
                yield _benign("openai_moderation_eval", f"oai-mod-{i:04d}", row["prompt"], scary=True)
    p = d / "truthfulqa" / "TruthfulQA.csv"
    if _exists(p):
        for i, row in enumerate(_read_csv(p)):
            yield _benign("truthfulqa", f"truthfulqa-{i:04d}", row["Question"], scary=True)
    p = d / "arena_hard" / "arena_hard_v0.1_question.jsonl"
    if _exists(p):
        for row in _read_jsonl(p):
            yield _benign("arena_hard", f"arena-{row['question_id'][:12]}", row["turns"][0]["content"], scary=False)
    p = d / "ifeval" / "ifeval_input_data.jsonl"
    if _exists(p):
        for row in _read_jsonl(p):
            yield _benign("ifeval", f"ifeval-{row['key']}", row["prompt"], scary=False)
    p = d / "ultrachat_eval" / "ultra_eval.json"
    if _exists(p):
        for i, row in enumerate(_read_json(p)):
            yield _benign("ultrachat_eval", f"ultrachat-{i:04d}", row["data"], scary=False)
    for fname, tag in (("en_100_text.jsonl", "en100"), ("prompt_lottery_en_250_text.jsonl", "lottery")):
        p = d / "oasst_eval" / fname
        if _exists(p):
            for i, text in enumerate(_read_jsonl(p)):
                yield _benign("oasst_eval", f"oasst-{tag}-{i:04d}", text if isinstance(text, str) else str(text),
                              scary=False)
    for i, row in _ailuminate_rows(d):  # specialised advice (elections, financial, health, legal): benign
        text = row["prompt_text"]
        if AILUMINATE_MAP.get(row["hazard"]) == "benign" and not (infer_category(text) or _SPC_HARM_CUE.search(text)):
            yield _benign("ailuminate_demo", f"ailuminate-{row['release_prompt_id']}", row["prompt_text"], scary=True,
                          source_category=row["hazard"], persona=row["persona"], row=i)
    for i, row in _coconot_rows(d):  # incomplete / unsupported / indeterminate / humanizing: not harm
        if row["category"] != "Requests with safety concerns":
            yield _benign("coconot_noncompliance", f"coconot-nc-{row['id']}", row["prompt"], scary=False,
                          source_category=f"{row['category']}/{row['subcategory']}", row=i)
    base = d / "cyberseceval"
    fname = "CybersecurityBenchmarks_datasets_mitre_frr_mitre_frr.json"
    if _exists(base / fname):  # false-refusal set: benign security requests that sound offensive
        drop = _dropped(decontamination_rows(base), fname)
        for i, row in enumerate(_read_json(base / fname)):
            if i not in drop and row.get("is_malicious") is False:
                yield _benign("cyberseceval", f"cyberseceval-frr-{i:03d}", row["mutated_prompt"], scary=True, row=i)
    p = d / "awesome_chatgpt_prompts" / "prompts.csv"
    if _exists(p):
        flagged = _flagged_acts(d / "awesome_chatgpt_prompts" / "FLAGGED.txt")
        for i, row in enumerate(_read_csv(p)):
            if row["act"].strip() in flagged or row.get("type", "TEXT") != "TEXT":
                continue
            if not row["prompt"].isascii():
                continue
            yield _benign("awesome_chatgpt_prompts", f"acp-{i:04d}", row["prompt"], scary=False, act=row["act"])


def _flagged_acts(path: Path) -> set[str]:
    """Names of `act` rows listed in FLAGGED.txt (lines of the form 'NAME<TAB>(rows: N)')."""
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if "(rows:" in line:
            out.add(line.split("\t")[0].split("(rows:")[0].strip())
    return out


def load_benign_requests(data_dir: Path) -> list[Item]:
    """Single-turn benign requests; ``meta['scary']`` marks sensitive-sounding ones (CoCoNot contrast, moderation
    rows with all labels 0, TruthfulQA)."""
    d = Path(data_dir)
    seen: set[str] = set()
    out = []
    for item in _benign_requests(d):
        if item is None:
            continue
        key = norm_key(item.text)
        if key in seen:
            continue
        seen.add(key)
        out.append(item)
    return out


# ------------------------------------------------------------------------------------------- benign dialogues
def _mt_bench(d: Path) -> Iterable[Item]:
    p = d / "mt_bench_101" / "data_subjective_mtbench101.jsonl"
    if not _exists(p):
        return
    for row in _read_jsonl(p):
        msgs = []
        for turn in row["history"]:
            msgs.append({"role": "user", "content": _truncate_words(_clean(turn["user"]), 120)})
            msgs.append({"role": "assistant", "content": _truncate_words(_clean(turn["bot"]), 50)})
        yield Item(f"mtbench101-{row['task']}-{row['id']}", "mt_bench_101", "benign_dialogue", messages=msgs,
                   meta={"task": row["task"]})


def _oasst_tree(d: Path) -> Iterable[Item]:
    p = d / "oasst_eval" / "en_100_tree.jsonl"
    if not _exists(p):
        return
    for row in _read_jsonl(p):
        node = row["prompt"]
        msgs = []
        while node and len(msgs) < 8:
            role = "user" if node["role"] == "prompter" else "assistant"
            msgs.append({"role": role, "content": _truncate_words(_clean(node["text"]), 120 if role == "user" else 50)})
            replies = [r for r in node.get("replies", []) if not r.get("deleted")]
            node = replies[0] if replies else None
        if msgs and msgs[-1]["role"] == "user" and len(msgs) > 1:
            msgs = msgs[:-1]
        yield Item(f"oasst-tree-{row['message_tree_id'][:8]}", "oasst_eval", "benign_dialogue", messages=msgs)


def _hh_helpful(d: Path) -> Iterable[Item]:
    p = d / "hh_helpful_sample_oa" / "realistic_seed_data.json"
    if not _exists(p):
        return
    data = _read_json(p)
    children: dict[str | None, list[dict[str, Any]]] = {}
    for m in data:
        children.setdefault(m["parent_message_id"], []).append(m)
    for root in children.get(None, []):
        msgs, node = [], root
        while node is not None:
            role = "user" if node["role"] == "prompter" else "assistant"
            msgs.append({"role": role, "content": _truncate_words(_clean(node["text"]), 120 if role == "user" else 50)})
            kids = children.get(node["user_message_id"], [])
            node = kids[0] if kids else None
        yield Item(f"hh-helpful-{root['user_message_id']}", "hh_helpful_sample_oa", "benign_dialogue", messages=msgs)


def _persona_chat(d: Path) -> Iterable[Item]:
    for split in ("test", "valid"):
        p = d / "synthetic_persona_chat" / f"Synthetic-Persona-Chat_{split}.csv"
        if not _exists(p):
            continue
        for i, row in enumerate(_read_csv(p)):
            msgs = []
            for line in row["Best Generated Conversation"].split("\n"):
                m = re.match(r"^User ([12]):\s*(.*)$", line.strip())
                if m and m.group(2).strip():
                    msgs.append({"role": "user" if m.group(1) == "1" else "assistant",
                                 "content": _truncate_words(_clean(m.group(2)), 60)})
            msgs = msgs[:8]
            if len(msgs) >= 2 and all(msgs[j]["role"] == ("user" if j % 2 == 0 else "assistant")
                                      for j in range(len(msgs))):
                yield Item(f"persona-{split}-{i:04d}", "synthetic_persona_chat", "benign_dialogue", messages=msgs)


def _diasafety_benign(d: Path, cap: int = DIASAFETY_BENIGN_CAP) -> Iterable[Item]:
    """Safe-labelled DiaSafety pairs as benign two-message dialogues, `cap` spread evenly over its categories;
    contexts that show a harm category by keyword (or self-harm intent) are skipped (see DIASAFETY_MAP)."""
    by_cat: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for rid, row in _diasafety_rows(d):
        if row["label"] != "Safe" or _SELF_HARM_INTENT.search(row["context"]) or infer_category(row["context"]):
            continue
        by_cat.setdefault(row["category"], []).append((rid, row))
    per_cat = cap // max(1, len(by_cat))
    for cat_name, rows in sorted(by_cat.items()):
        step = max(1.0, len(rows) / per_cat)
        for k in range(min(per_cat, len(rows))):
            rid, row = rows[int(k * step)]
            yield Item(f"diasafety-{rid}", "diasafety", "benign_dialogue", messages=_diasafety_msgs(row),
                       meta={"source_category": cat_name})


def load_benign_dialogues(data_dir: Path) -> list[Item]:
    """Benign multi-turn chats: MT-Bench-101, OASST trees, hh helpful dialogues, Synthetic-Persona-Chat, and
    DiaSafety's Safe-labelled context/response pairs (capped)."""
    d = Path(data_dir)
    return [*_mt_bench(d), *_oasst_tree(d), *_hh_helpful(d), *_persona_chat(d), *_diasafety_benign(d)]


def load_jbb_benign_twins(data_dir: Path) -> list[Item]:
    """The 100 topic-matched benign twins of JBB-Behaviors (over-refusal probes, split by item like the rest)."""
    p = Path(data_dir) / "jbb_behaviors" / "benign-behaviors.csv"
    if not _exists(p):
        return []
    return [Item(f"jbb-benign-{int(row['index']):03d}", "jbb_behaviors", "benign_twin", _clean(row["goal"]), "benign",
                 meta={"source_category": row["category"], "behavior": row["behavior"]}) for row in _read_csv(p)]


def load_all(data_dir: Path) -> dict[str, list[Item]]:
    """Every loader at once, keyed by kind."""
    return {
        "harmful_request": load_harmful_requests(data_dir),
        "harmful_dialogue": load_harmful_dialogues(data_dir),
        "benign_request": load_benign_requests(data_dir),
        "benign_dialogue": load_benign_dialogues(data_dir),
        "benign_twin": load_jbb_benign_twins(data_dir),
    }
