"""Convert the public datasets of `../shared/data/` into labelled `trajsafe eval` JSONL (docs/contracts.md §5).

``python -m trajsafe_sdk.converters DATA_DIR OUT_DIR [--split dev] [--seed 0]`` writes ``OUT_DIR/<split>.jsonl``
and one file per source under ``OUT_DIR/<split>_by_source/``. The dataset parsing, the mapping of each source's
categories onto docs/contracts.md §2 and the split by source item live in `trajsafe_sdk.training` (one copy);
this module only selects a split and writes the evaluation records:

    {"id", "source", "label": "harmful"|"benign", "category", "pattern", "messages": [{"role", "content"}]}

(`pattern` says how the conversation was built, e.g. ``single_harmful``, ``gradual_escalation``,
``real_multi_turn_attack``, ``benign_dialogue``; `trajsafe eval --by pattern` breaks the metrics down by it).
The development split is what the shipped monitor's development metrics are measured on.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EVAL_FIELDS = ("id", "source", "label", "category", "pattern", "family", "seed_family", "messages")


def eval_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A corpus record reduced to the evaluation format (training extras such as `targets` dropped)."""
    out = {k: record[k] for k in EVAL_FIELDS if k in record}
    out["messages"] = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return out


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "unknown"


def convert(data_dir: Path, out_dir: Path, split: str = "dev", seed: int = 0,
            smoke: bool = False) -> dict[str, int]:
    """Build the corpus and write `<split>.jsonl` plus per-source files; returns counts per source."""
    from .training.dataset import build_corpus, write_jsonl

    corpus = build_corpus(Path(data_dir), seed=seed, smoke=smoke)
    splits = list(corpus) if split == "all" else [split]
    if any(s not in corpus for s in splits):
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join([*corpus, 'all'])}")
    counts: Counter[str] = Counter()
    for name in splits:
        records = [eval_record(r) for r in corpus[name]]
        write_jsonl(records, out_dir / f"{name}.jsonl")
        by_source: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_source.setdefault(str(rec.get("source") or "unknown"), []).append(rec)
        for source, recs in sorted(by_source.items()):
            write_jsonl(recs, out_dir / f"{name}_by_source" / f"{_safe_name(source)}.jsonl")
            counts[f"{name}/{source}"] = len(recs)
    return dict(counts)


def _summary(counts: Mapping[str, int]) -> Iterable[str]:
    width = max((len(k) for k in counts), default=0)
    for key, n in sorted(counts.items()):
        yield f"  {key:<{width}}  {n}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trajsafe_sdk.converters", description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path, help="the shared data folder (../shared/data)")
    ap.add_argument("out_dir", type=Path, help="where to write <split>.jsonl and <split>_by_source/")
    ap.add_argument("--split", default="dev", help="dev (default), train or all")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic trajectories (default: 0)")
    ap.add_argument("--smoke", action="store_true", help="a few hundred conversations, for tests")
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"error: {args.data_dir} is not a folder", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        counts = convert(args.data_dir, args.out_dir, args.split, args.seed, args.smoke)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {sum(counts.values())} conversations to {args.out_dir} in {time.perf_counter() - started:.1f}s")
    print("\n".join(_summary(counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
