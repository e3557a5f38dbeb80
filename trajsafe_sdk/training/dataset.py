"""Build the training / development corpus: sources -> synthetic trajectories -> hindsight targets -> JSONL.

``python -m trajsafe_sdk.training.dataset DATA_DIR OUT_DIR [--seed 0] [--smoke]`` writes ``train.jsonl``,
``dev.jsonl``, ``dev_jbb_benign_twins.jsonl`` (the development share of the JBB benign twins) and ``families.json``
(counts per leave-source-out family: harmful / benign x single / multi-turn), and prints counts.

Splits are BY SOURCE ITEM: every conversation derived from one seed item shares its ``seed_id`` and goes to the
split chosen by an MD5 hash of that id (~85/15), so no item leaks across splits. Each item gets its own
``random.Random`` seeded from ``(seed, item id)``, so the output is deterministic and independent of order.

Record (one JSON object per line; the ``trajsafe eval`` input of docs/contracts.md §5 plus training extras)::

    {"id", "source", "license", "seed_id", "pattern", "label", "category", "topic", "family", "seed_family",
     "messages": [{role, content}], "seed_families": [...],
     "targets": [{"message_index", "action", "category", "risk"}],
     "annotations": [per-message notes or null]}

Families (for LEAVE-SOURCE-OUT evaluation, :func:`family_of`): every record belongs to exactly one family.

* ``behaviors`` — HarmBench, AdvBench, JBB-Behaviors and StrongREJECT: they overlap and are de-duplicated against
  each other, so they are held out together. The 100 JBB benign twins go with them: they are topic-matched twins
  of the JBB harmful behaviours (same topics, same authors), so holding out ``behaviors`` holds out both halves.
* every other public folder of the data directory is its own family (folder name), e.g. ``aart``, ``diasafety``;
  the new folders overlap with none of the others (checked on normalised text; CoCoNot's contrast and
  noncompliance sets share no prompt and stay separate families).
* ``synthetic`` — ALL templated data: every record whose ``pattern`` is not one of :data:`REAL_PATTERNS` (the seed
  request alone, a real dialogue or a real benign request) or whose source is ``trajsafe_synthetic``. Synthetic
  trajectories built around a public seed keep that seed's ``source`` and license, and :func:`seed_family_of` names
  the seed's family, so a fold holding out family F also drops the synthetic records built from F's seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import synth
from .sources import Item, load_all
from .teacher import label_conversation, strip_annotations

DEV_SHARE = 0.15
SYNTHETIC_SOURCE = "trajsafe_synthetic"
# Public folders held out together (overlapping, de-duplicated against each other); any other folder: itself.
SOURCE_FAMILY: dict[str, str] = {"harmbench": "behaviors", "advbench": "behaviors", "jbb_behaviors": "behaviors",
                                 "strongreject": "behaviors"}
# Patterns of records that are real public data (a seed request alone, possibly with a canned reply or system
# prompt; a real dialogue; a real benign request). Every other pattern is templated: family "synthetic".
REAL_PATTERNS = frozenset({"single_turn", "real_multi_turn_attack", "benign_dialogue", "benign_single",
                           "benign_scary_single", "jbb_benign_twin"})


def source_family(source: str) -> str:
    """The family of a source folder (``synthetic`` for the templated generators)."""
    return "synthetic" if source == SYNTHETIC_SOURCE else SOURCE_FAMILY.get(source, source)


def family_of(record: dict[str, Any]) -> str:
    """Leave-source-out family of a record (see the module docstring): ``synthetic`` for every templated record."""
    if record["source"] == SYNTHETIC_SOURCE or record["pattern"] not in REAL_PATTERNS:
        return "synthetic"
    return source_family(record["source"])


def seed_family_of(record: dict[str, Any]) -> str:
    """Family of the public seed a record was built from (its own family for real records; ``synthetic`` for
    records built from templates alone)."""
    return source_family(record["source"])


def seed_families_of(record: dict[str, Any]) -> list[str]:
    """Every family whose public text appears in a record: the seed's family plus those of benign public filler
    turns (topic switches draw benign requests from other folders). A leave-source-out fold holding out F drops
    the synthetic records with F in this list (``record["seed_families"]``, written by :func:`build_corpus`)."""
    return list(record.get("seed_families") or [seed_family_of(record)])
# Benign single-turn requests kept per source (the scary-sounding ones are all kept).
BENIGN_SINGLE_CAP = {"clinc150": 300, "banking77": 150, "hwu64": 250, "gsm8k": 150, "gpteacher": 250,
                     "arena_hard": 200, "ifeval": 150, "self_instruct": 200, "ultrachat_eval": 200,
                     "oasst_eval": 200, "awesome_chatgpt_prompts": 200, "coconot_noncompliance": 700}
# Harmful single-turn requests kept per source (AART is large and formulaic: capped, spread over its rows).
HARMFUL_SINGLE_CAP = {"aart": 700}
# Synthetic trajectories per harmful seed, relative to `synthetic_per_seed` (fractions are rounded at random per
# seed): the de-duplicated behaviour sets get the most, formulaic or large sets fewer.
SYNTH_SHARE = {"harmbench": 1.0, "advbench": 1.0, "jbb": 1.0, "strongreject": 1.0, "catqa": 0.25, "harmfulqa": 0.2,
               "dangerousqa": 0.3, "ailuminate": 0.35, "aart": 0.2, "cyberseceval": 0.25, "coconot": 0.5}
STITCH_SOURCES = ("clinc150", "hwu64", "banking77", "self_instruct", "oasst_eval", "gsm8k", "gpteacher",
                  "ultrachat_eval", "truthfulqa", "coconot_contrast", "openai_moderation_eval")
PERSONA_CAP = 300
N_STITCHED = 450
N_SCARY_SINGLE = 150
SYNTH_BENIGN_RANGE = (600, 1500)  # classic benign synthetic conversations (same openers as harmful ones)
# v2 generators (synth.py, issue 13): counts in the full corpus
N_NEW = {"jailbreak": 800, "plain": 450, "plain_intent": 150, "marker_harmful": 350, "explicit_after_steer": 350,
         "monotone": 350, "gradual_specific": 350, "intent_contrast_harmful": 360, "lookalike_single": 550,
         "lookalike_multi": 500, "fp_recovery": 600, "marker_benign": 400, "wrapper_benign": 400,
         "intent_contrast_benign": 480, "benign_gradual_specific": 360}
MAX_SEED_WORDS = 60  # seeds wrapped by the v2 generators (keeps multi-turn conversations short)


def split_of(seed_id: str, dev_share: float = DEV_SHARE) -> str:
    """Deterministic split of a seed item (MD5 of its id, not Python's randomised hash())."""
    h = int(hashlib.md5(seed_id.encode("utf-8")).hexdigest()[:8], 16)
    return "dev" if (h % 10_000) < dev_share * 10_000 else "train"


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(f"{seed}:{key}")


def make_record(conv: dict[str, Any], rec_id: str, source: str, license_: str, seed_id: str) -> dict[str, Any]:
    """Label an annotated conversation with the teacher and turn it into an output record."""
    targets = label_conversation(conv)
    messages, notes = strip_annotations(conv["messages"])
    rec = {"id": rec_id, "source": source, "license": license_, "seed_id": seed_id, "pattern": conv["pattern"],
           "label": conv["label"], "category": conv["category"], "topic": conv.get("topic", conv["category"])}
    rec["family"], rec["seed_family"] = family_of(rec), seed_family_of(rec)
    rec.update({"messages": messages, "targets": targets, "annotations": notes})
    return rec


def _dialogue_conv(item: Item, label: str, pattern: str) -> dict[str, Any]:
    return {"pattern": pattern, "label": label, "category": item.category, "topic": item.category,
            "messages": [dict(m) for m in item.messages]}


def _stride(items: list[Any], n: int) -> list[Any]:
    """Up to `n` items spread evenly over the list (deterministic)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]


def _by_hash(items: list[Item], salt: str) -> list[Item]:
    """A deterministic, salt-dependent order of items (each generator draws different seeds)."""
    return sorted(items, key=lambda it: hashlib.md5(f"{salt}:{it.item_id}".encode()).hexdigest())


def build_corpus(data_dir: Path, seed: int = 0, synthetic_per_seed: int = 2,
                 smoke: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The whole corpus as ``{"train": [...], "dev": [...]}`` (see module docstring)."""
    items = load_all(Path(data_dir))
    harmful_req = items["harmful_request"]
    for src, cap in HARMFUL_SINGLE_CAP.items():
        keep = {it.item_id for it in _stride([i for i in harmful_req if i.source == src], cap)}
        harmful_req = [i for i in harmful_req if i.source != src or i.item_id in keep]
    harmful_dlg = items["harmful_dialogue"]
    benign_req = items["benign_request"]
    benign_dlg = [i for i in items["benign_dialogue"] if i.source != "synthetic_persona_chat"]
    persona = [i for i in items["benign_dialogue"] if i.source == "synthetic_persona_chat"]
    benign_dlg += _stride(persona, PERSONA_CAP)
    twins = items["benign_twin"]
    n_stitched, n_scary_single, single_cap = N_STITCHED, N_SCARY_SINGLE, dict(BENIGN_SINGLE_CAP)
    n_new = dict(N_NEW)
    synth_benign_range = SYNTH_BENIGN_RANGE
    if smoke:
        harmful_req, harmful_dlg = _stride(harmful_req, 40), _stride(harmful_dlg, 20)
        benign_dlg, twins = _stride(benign_dlg, 30), _stride(twins, 10)
        n_stitched, n_scary_single = 20, 10
        single_cap = {k: 5 for k in single_cap}
        n_new = {k: 15 for k in n_new}
        synth_benign_range = (40, 80)

    # benign request pools per split (topic switches and stitched chats draw from their own split only)
    pools: dict[str, dict[str, list[str]]] = {"train": {}, "dev": {}}
    for it in benign_req:
        if it.source in STITCH_SOURCES and len(it.text.split()) <= 40:
            pools[split_of(it.item_id)].setdefault(it.source, []).append(it.text)
    switch_pool = {s: [t for src in ("clinc150", "hwu64", "self_instruct", "oasst_eval", "gsm8k", "truthfulqa")
                       for t in p.get(src, [])] for s, p in pools.items()}

    out: dict[str, list[dict[str, Any]]] = {"train": [], "dev": []}

    # public benign texts that synthetic conversations may use as filler turns -> their family
    text_family = {it.text: source_family(it.source) for it in benign_req}

    def emit(conv: dict[str, Any], rec_id: str, source: str, license_: str, seed_id: str,
             split: str | None = None) -> None:
        rec = make_record(conv, rec_id, source, license_, seed_id)
        fams = {rec["seed_family"]}
        if rec["family"] == "synthetic":
            fams |= {text_family[m["content"]] for m in rec["messages"]
                     if m["role"] == "user" and m["content"] in text_family}
        if len(fams) > 1:
            fams.discard("synthetic")
        rec["seed_families"] = sorted(fams)
        out[split or split_of(seed_id)].append(rec)

    # ---- harmful: single requests + synthetic trajectories around each
    for it in harmful_req:
        split = split_of(it.item_id)
        rng = _rng(seed, it.item_id)
        emit(synth.single_harmful(rng, it.text, it.category), f"{it.item_id}-single", it.source, it.license,
             it.item_id)
        x = synthetic_per_seed * SYNTH_SHARE.get(it.item_id.split("-")[0], 1.0)
        n = int(x) + (rng.random() < x - int(x))
        for k, conv in enumerate(synth.harmful_conversations(rng, it.text, it.category, n, switch_pool[split])):
            emit(conv, f"{it.item_id}-{conv['pattern']}-{k}", it.source, it.license, it.item_id)
    for it in harmful_dlg:
        emit(_dialogue_conv(it, "harmful", "real_multi_turn_attack"), it.item_id, it.source, it.license, it.item_id)

    # ---- v2 harmful generators around public seeds (family "synthetic", seed family = the seed's)
    short = [it for it in harmful_req if len(it.text.split()) <= MAX_SEED_WORDS]
    same_cat: dict[tuple[str, str, str], list[str]] = {}  # (split, family, category): earlier turns of the same
    for it in short:                                         # family only, so a held-out family leaks nowhere
        if len(it.text.split()) <= 30:
            same_cat.setdefault((split_of(it.item_id), source_family(it.source), it.category), []).append(it.text)

    def around_seeds(name: str, n: int, make: Any) -> None:
        for k, it in enumerate(_stride(_by_hash(short, name), n)):
            rng = _rng(seed, f"{name}:{it.item_id}")
            emit(make(rng, it), f"{it.item_id}-{name}-{k}", it.source, it.license, it.item_id)

    around_seeds("jailbreak", n_new["jailbreak"], lambda r, it: synth.jailbreak_wrapped(r, it.text, it.category))
    around_seeds("plain", n_new["plain"], lambda r, it: synth.plain_harmful(r, it.text, it.category))
    around_seeds("marker_harmful", n_new["marker_harmful"],
                 lambda r, it: synth.marker_harmful(r, it.text, it.category))
    around_seeds("explicit_after_steer", n_new["explicit_after_steer"],
                 lambda r, it: synth.explicit_after_steer(r, it.text, it.category))
    around_seeds("monotone", n_new["monotone"], lambda r, it: synth.monotone_escalation(
        r, it.text, it.category,
        [t for t in same_cat.get((split_of(it.item_id), source_family(it.source), it.category), []) if t != it.text]))
    around_seeds("gradual_specific", n_new["gradual_specific"],
                 lambda r, it: synth.gradual_specific(r, it.text, it.category))
    for k in range(n_new["intent_contrast_harmful"]):
        sid = f"synth-intent-harmful-{k:05d}"
        cat = synth.HARM_CATEGORIES[k % len(synth.HARM_CATEGORIES)]
        emit(synth.intent_contrast(_rng(seed, sid), cat, True), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    for k in range(n_new["plain_intent"]):
        sid = f"synth-plain-intent-{k:05d}"
        cat = synth.HARM_CATEGORIES[k % len(synth.HARM_CATEGORIES)]
        emit(synth.plain_harmful(_rng(seed, sid), None, cat), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    n_harmful = sum(r["label"] == "harmful" for recs in out.values() for r in recs)

    # ---- benign: real dialogues, single requests, stitched chats, scary singles, synthetic scary-but-benign
    for it in benign_dlg:
        emit(_dialogue_conv(it, "benign", "benign_dialogue"), it.item_id, it.source, it.license, it.item_id)
    by_source: dict[str, list[Item]] = {}
    for it in benign_req:
        by_source.setdefault(it.source, []).append(it)
    for src, its in sorted(by_source.items()):
        scary = [i for i in its if i.meta.get("scary")]
        plain = [i for i in its if not i.meta.get("scary")]
        chosen = (_stride(scary, 10) if smoke else scary) + _stride(plain, single_cap.get(src, 5 if smoke else 300))
        for it in chosen:
            rng = _rng(seed, it.item_id)
            msgs = synth._maybe_system(rng, [synth._u(it.text, 0)], 0.15)
            pattern = "benign_scary_single" if it.meta.get("scary") else "benign_single"
            emit({"pattern": pattern, "label": "benign", "category": "benign", "messages": msgs},
                 f"{it.item_id}-single", it.source, it.license, it.item_id)
    for k in range(n_stitched):
        sid = f"stitched-{k:05d}"
        split = split_of(sid)
        rng = _rng(seed, sid)
        src_pool = pools[split]
        src = rng.choice(sorted(s for s in src_pool if len(src_pool[s]) >= 4))
        conv = synth.stitched_benign(rng, rng.sample(src_pool[src], rng.choice([2, 2, 3, 4])))
        emit(conv, sid, src, Item(sid, src, "benign_request").license, sid, split)
    for k in range(n_scary_single):
        sid = f"synth-scary-single-{k:05d}"
        emit(synth.scary_benign_single(_rng(seed, sid)), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)

    # ---- v2 benign generators: risky-sounding requests, false-positive recovery, marker text
    for k in range(n_new["lookalike_single"]):
        sid = f"synth-lookalike-single-{k:05d}"
        emit(synth.benign_lookalike(_rng(seed, sid), 1), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    for k in range(n_new["lookalike_multi"]):
        sid = f"synth-lookalike-multi-{k:05d}"
        rng = _rng(seed, sid)
        emit(synth.benign_lookalike(rng, rng.choice([2, 2, 3, 3, 4, 5])), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    for k in range(n_new["fp_recovery"]):
        sid = f"synth-fp-recovery-{k:05d}"
        rng = _rng(seed, sid)  # ordinary turns: template requests or public benign requests of the same split
        pool = synth.ORDINARY if rng.random() < 0.5 else switch_pool[split_of(sid)]
        emit(synth.fp_recovery(rng, pool), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    short_benign = [it for it in benign_req if len(it.text.split()) <= 40]
    n_mb = n_new["marker_benign"]
    for k, it in enumerate(_stride(_by_hash(short_benign, "marker_benign"), n_mb // 2)):
        emit(synth.marker_benign(_rng(seed, f"marker:{it.item_id}"), it.text), f"{it.item_id}-marker_benign-{k}",
             it.source, it.license, it.item_id)
    for k in range(n_mb - n_mb // 2):
        sid = f"synth-marker-benign-{k:05d}"
        rng = _rng(seed, sid)
        emit(synth.marker_benign(rng, synth.lookalike_text(rng)[0]), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)

    for k in range(n_new["intent_contrast_benign"]):
        sid = f"synth-intent-benign-{k:05d}"
        cat = synth.HARM_CATEGORIES[k % len(synth.HARM_CATEGORIES)]
        emit(synth.intent_contrast(_rng(seed, sid), cat, False), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    for k in range(n_new["benign_gradual_specific"]):
        sid = f"synth-benign-gradual-{k:05d}"
        cat = synth.HARM_CATEGORIES[k % len(synth.HARM_CATEGORIES)]
        emit(synth.benign_gradual_specific(_rng(seed, sid), cat), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)
    n_wb = n_new["wrapper_benign"]
    for k, it in enumerate(_stride(_by_hash(short_benign, "wrapper_benign"), n_wb // 2)):
        emit(synth.jailbreak_benign(_rng(seed, f"wrapper:{it.item_id}"), it.text), f"{it.item_id}-wrapper_benign-{k}",
             it.source, it.license, it.item_id)
    for k in range(n_wb - n_wb // 2):
        sid = f"synth-wrapper-benign-{k:05d}"
        rng = _rng(seed, sid)
        text = synth.lookalike_text(rng)[0] if rng.random() < 0.6 else rng.choice(synth.ORDINARY)
        emit(synth.jailbreak_benign(rng, text), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)

    n_benign = sum(r["label"] == "benign" for recs in out.values() for r in recs)
    n_synth_benign = min(max(synth_benign_range[0], n_harmful - n_benign), synth_benign_range[1])
    for k in range(n_synth_benign):
        cat = synth.HARM_CATEGORIES[k % len(synth.HARM_CATEGORIES)]
        sid = f"synth-benign-{cat}-{k:05d}"
        emit(synth.benign_conversation(_rng(seed, sid), cat), sid, SYNTHETIC_SOURCE, "Apache-2.0", sid)

    # ---- JBB benign twins: split by pair like every other item (a twin goes where its pair index hashes)
    for it in twins:
        conv = {"pattern": "jbb_benign_twin", "label": "benign", "category": "benign",
                "messages": [synth._u(it.text, 0)]}
        emit(conv, it.item_id, it.source, it.license, it.item_id)
    for split in out:
        _rng(seed, f"shuffle-{split}").shuffle(out[split])
    return out


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write records one JSON object per line; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def family_table(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts per family: harmful / benign and single- / multi-turn (more than one user message)."""
    table: dict[str, dict[str, int]] = {}
    for r in records:
        row = table.setdefault(r.get("family") or family_of(r), {"harmful_single": 0, "harmful_multi": 0,
                                                                 "benign_single": 0, "benign_multi": 0})
        multi = sum(m["role"] == "user" for m in r["messages"]) > 1
        row[f"{r['label']}_{'multi' if multi else 'single'}"] += 1
    return dict(sorted(table.items(), key=lambda kv: -sum(kv[1].values())))


def family_summary(records: Iterable[dict[str, Any]]) -> str:
    """Family table as text (both splits together)."""
    table = family_table(records)
    lines = [f"{'family':<24}{'harm 1t':>9}{'harm mt':>9}{'ben 1t':>9}{'ben mt':>9}{'total':>9}"]
    for fam, c in table.items():
        lines.append(f"{fam:<24}{c['harmful_single']:>9}{c['harmful_multi']:>9}{c['benign_single']:>9}"
                     f"{c['benign_multi']:>9}{sum(c.values()):>9}")
    tot = {k: sum(c[k] for c in table.values()) for k in ("harmful_single", "harmful_multi", "benign_single",
                                                            "benign_multi")}
    lines.append(f"{'ALL':<24}{tot['harmful_single']:>9}{tot['harmful_multi']:>9}{tot['benign_single']:>9}"
                 f"{tot['benign_multi']:>9}{sum(tot.values()):>9}")
    return "\n".join(lines)


def summarize(corpus: dict[str, list[dict[str, Any]]]) -> str:
    """Human-readable counts per split / label / category / source / pattern and length statistics."""
    lines = []
    for split, recs in corpus.items():
        multi = sum(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in recs)
        words = sorted(sum(len(m["content"].split()) for m in r["messages"]) for r in recs)
        actions = Counter(t["action"] for r in recs for t in r["targets"])
        lines.append(f"== {split}: {len(recs)} conversations, multi-turn {multi} ({multi / max(1, len(recs)):.0%}), "
                     f"words median {words[len(words) // 2] if words else 0}, "
                     f"<400 words {sum(w < 400 for w in words) / max(1, len(words)):.1%}")
        for key in ("label", "category", "family", "source", "pattern"):
            c = Counter(r[key] for r in recs)
            lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in c.most_common()))
        lines.append("  target actions: " + ", ".join(f"{k}={v}" for k, v in actions.most_common()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trajsafe_sdk.training.dataset", description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic-per-seed", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a few hundred conversations, in seconds")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    corpus = build_corpus(args.data_dir, seed=args.seed, synthetic_per_seed=args.synthetic_per_seed,
                          smoke=args.smoke)
    for split, recs in corpus.items():
        write_jsonl(recs, args.out_dir / f"{split}.jsonl")
    write_jsonl([r for r in corpus["dev"] if r["pattern"] == "jbb_benign_twin"],
                args.out_dir / "dev_jbb_benign_twins.jsonl")
    families = {"all": family_table(r for recs in corpus.values() for r in recs),
                **{split: family_table(recs) for split, recs in corpus.items()}}
    (args.out_dir / "families.json").write_text(json.dumps(families, indent=1) + "\n", encoding="utf-8")
    print(summarize(corpus))
    print("== families (train + dev; leave-source-out units, see family_of)")
    print(family_summary(r for recs in corpus.values() for r in recs))
    print(f"built in {time.perf_counter() - t0:.1f}s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
