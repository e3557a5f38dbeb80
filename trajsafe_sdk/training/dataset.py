"""Build the training / development corpus: sources -> synthetic trajectories -> hindsight targets -> JSONL.

``python -m trajsafe_sdk.training.dataset DATA_DIR OUT_DIR [--seed 0] [--smoke]`` writes ``train.jsonl``,
``dev.jsonl`` and ``dev_jbb_benign_twins.jsonl`` (the development share of the JBB benign twins), and prints counts.

Splits are BY SOURCE ITEM: every conversation derived from one seed item shares its ``seed_id`` and goes to the
split chosen by an MD5 hash of that id (~85/15), so no item leaks across splits. Each item gets its own
``random.Random`` seeded from ``(seed, item id)``, so the output is deterministic and independent of order.

Record (one JSON object per line; the ``trajsafe eval`` input of docs/contracts.md §5 plus training extras)::

    {"id", "source", "license", "seed_id", "pattern", "label", "category", "topic", "messages": [{role, content}],
     "targets": [{"message_index", "action", "category", "risk"}], "annotations": [per-message notes or null]}
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
# Benign single-turn requests kept per source (the scary-sounding ones are all kept).
BENIGN_SINGLE_CAP = {"clinc150": 400, "banking77": 200, "hwu64": 300, "gsm8k": 200, "gpteacher": 300,
                     "arena_hard": 200, "ifeval": 200, "self_instruct": 250, "ultrachat_eval": 250,
                     "oasst_eval": 250, "awesome_chatgpt_prompts": 250}
# Synthetic trajectories per harmful seed, relative to `synthetic_per_seed` (formulaic QA sets get fewer).
SYNTH_SHARE = {"harmfulqa": 0.5, "dangerousqa": 0.65}
STITCH_SOURCES = ("clinc150", "hwu64", "banking77", "self_instruct", "oasst_eval", "gsm8k", "gpteacher",
                  "ultrachat_eval", "truthfulqa", "coconot_contrast", "openai_moderation_eval")
PERSONA_CAP = 600
N_STITCHED = 1500
N_SCARY_SINGLE = 300


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
    return {"id": rec_id, "source": source, "license": license_, "seed_id": seed_id, "pattern": conv["pattern"],
            "label": conv["label"], "category": conv["category"], "topic": conv.get("topic", conv["category"]),
            "messages": messages, "targets": targets, "annotations": notes}


def _dialogue_conv(item: Item, label: str, pattern: str) -> dict[str, Any]:
    return {"pattern": pattern, "label": label, "category": item.category, "topic": item.category,
            "messages": [dict(m) for m in item.messages]}


def _stride(items: list[Any], n: int) -> list[Any]:
    """Up to `n` items spread evenly over the list (deterministic)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]


def build_corpus(data_dir: Path, seed: int = 0, synthetic_per_seed: int = 7,
                 smoke: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The whole corpus as ``{"train": [...], "dev": [...]}`` (see module docstring)."""
    items = load_all(Path(data_dir))
    harmful_req = items["harmful_request"]
    harmful_dlg = items["harmful_dialogue"]
    benign_req = items["benign_request"]
    benign_dlg = [i for i in items["benign_dialogue"] if i.source != "synthetic_persona_chat"]
    persona = [i for i in items["benign_dialogue"] if i.source == "synthetic_persona_chat"]
    benign_dlg += _stride(persona, PERSONA_CAP)
    twins = items["benign_twin"]
    n_stitched, n_scary_single, single_cap = N_STITCHED, N_SCARY_SINGLE, dict(BENIGN_SINGLE_CAP)
    if smoke:
        harmful_req, harmful_dlg = _stride(harmful_req, 30), _stride(harmful_dlg, 15)
        benign_dlg, twins = _stride(benign_dlg, 30), _stride(twins, 10)
        n_stitched, n_scary_single = 20, 10
        single_cap = {k: 5 for k in single_cap}
        synthetic_per_seed = min(synthetic_per_seed, 4)

    # benign request pools per split (topic switches and stitched chats draw from their own split only)
    pools: dict[str, dict[str, list[str]]] = {"train": {}, "dev": {}}
    for it in benign_req:
        if it.source in STITCH_SOURCES and len(it.text.split()) <= 40:
            pools[split_of(it.item_id)].setdefault(it.source, []).append(it.text)
    switch_pool = {s: [t for src in ("clinc150", "hwu64", "self_instruct", "oasst_eval", "gsm8k", "truthfulqa")
                       for t in p.get(src, [])] for s, p in pools.items()}

    out: dict[str, list[dict[str, Any]]] = {"train": [], "dev": []}

    def emit(conv: dict[str, Any], rec_id: str, source: str, license_: str, seed_id: str,
             split: str | None = None) -> None:
        out[split or split_of(seed_id)].append(make_record(conv, rec_id, source, license_, seed_id))

    # ---- harmful: single requests + synthetic trajectories around each
    for it in harmful_req:
        split = split_of(it.item_id)
        rng = _rng(seed, it.item_id)
        emit(synth.single_harmful(rng, it.text, it.category), f"{it.item_id}-single", it.source, it.license,
             it.item_id)
        n = max(1, round(synthetic_per_seed * SYNTH_SHARE.get(it.item_id.split("-")[0], 1.0)))
        for k, conv in enumerate(synth.harmful_conversations(rng, it.text, it.category, n, switch_pool[split])):
            emit(conv, f"{it.item_id}-{conv['pattern']}-{k}", it.source, it.license, it.item_id)
    for it in harmful_dlg:
        emit(_dialogue_conv(it, "harmful", "real_multi_turn_attack"), it.item_id, it.source, it.license, it.item_id)
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
        emit(synth.scary_benign_single(_rng(seed, sid)), sid, "trajsafe_synthetic", "Apache-2.0", sid)
    n_benign = sum(r["label"] == "benign" for recs in out.values() for r in recs)
    n_synth_benign = max(12 * 5, n_harmful - n_benign)
    for k in range(n_synth_benign):
        cat = synth.HARM_CATEGORIES[k % len(synth.HARM_CATEGORIES)]
        sid = f"synth-benign-{cat}-{k:05d}"
        emit(synth.benign_conversation(_rng(seed, sid), cat), sid, "trajsafe_synthetic", "Apache-2.0", sid)

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
        for key in ("label", "category", "source", "pattern"):
            c = Counter(r[key] for r in recs)
            lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in c.most_common()))
        lines.append("  target actions: " + ", ".join(f"{k}={v}" for k, v in actions.most_common()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trajsafe_sdk.training.dataset", description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic-per-seed", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="a few hundred conversations, in seconds")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    corpus = build_corpus(args.data_dir, seed=args.seed, synthetic_per_seed=args.synthetic_per_seed,
                          smoke=args.smoke)
    for split, recs in corpus.items():
        write_jsonl(recs, args.out_dir / f"{split}.jsonl")
    write_jsonl([r for r in corpus["dev"] if r["pattern"] == "jbb_benign_twin"],
                args.out_dir / "dev_jbb_benign_twins.jsonl")
    print(summarize(corpus))
    print(f"built in {time.perf_counter() - t0:.1f}s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
