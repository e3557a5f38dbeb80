"""Leave-source-out of head variants on cached trunk features (an experiment driver, not part of the build).

    python benchmarks/loso_variants.py DATA_DIR WORK NAME '{"epochs": 3}' [--seed 0] [--trunk-layers 8]

WORK is a `build_default --work` folder whose feature cache already holds every conversation of the corpus (run
`build_default DATA_DIR --out TMP --work WORK --no-loso` first after a corpus change). Writes
WORK/variants/NAME.sSEED.json: the monitor's pooled and per-family figures, the per-fold policies and, per held-out
conversation, the highest non-allow probability over its user turns (threshold-free: the AUROC printed at the end is
computed from it).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from trajsafe_sdk.layout import MessageEncoder
from trajsafe_sdk.training import loso
from trajsafe_sdk.training.build_default import POLICY_TARGETS, TRUNKS, package_layout
from trajsafe_sdk.training.dataset import build_corpus
from trajsafe_sdk.training.features import FeatureStore
from trajsafe_sdk.training.head import FeatureLayout, HeadConfig
from trajsafe_sdk.training.pretrained import load_tokenizer
from trajsafe_sdk.training.train import record_messages

HIDDEN = 576  # SmolLM2-135M's hidden size: the width of each layer's columns in the cache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("name")
    p.add_argument("head", help="HeadConfig overrides as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--families", default="", help="comma-separated folds to run (default: all)")
    p.add_argument("--trunk-layers", type=int, choices=sorted(TRUNKS), default=8,
                   help="whose feature cache WORK holds (build_default --trunk-layers)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trunk = TRUNKS[args.trunk_layers]
    corpus = build_corpus(args.data_dir, seed=0)
    records = corpus["train"] + corpus["dev"]
    tokenizer = load_tokenizer()
    encoder = MessageEncoder(tokenizer, package_layout(tokenizer))
    arch = {"hidden_size": HIDDEN, "num_layers": trunk.layers + 1}
    store = FeatureStore(args.work / f"features.L{trunk.layers}.pkl")
    feats, single_feats = store.extract_corpus(None, encoder, arch, [record_messages(r) for r in records])
    del store
    cfg = HeadConfig(seed=args.seed, layers=trunk.feature_layers, pool_layers=trunk.pool_layers)
    cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.head).items()})
    layout = FeatureLayout(trunk.layers, tuple(trunk.pool_sources), HIDDEN)
    report = loso.leave_source_out(records, feats, single_feats, encoder, cfg, layout, POLICY_TARGETS,
                                   families=[f for f in args.families.split(",") if f] or None)
    scores = [(it["family"], it["label"], it["multi_turn"], it["non_allow"]) for it in report["items"]]
    pooled = report["monitor"]["pooled"]
    out = args.work / "variants" / f"{args.name}.s{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"head": cfg.to_json(), "pooled": pooled, "families": report["monitor"]["families"],
                               "policies": report["policies"], "scores": scores}, default=str))
    harmful = np.array([s[1] == "harmful" for s in scores])
    multi = np.array([s[2] for s in scores])
    act = np.array([s[3] for s in scores])

    def auroc(group: np.ndarray) -> str:
        keep = group | ~harmful
        return f"{roc_auc_score(harmful[keep], act[keep]):.3f}" if len(set(harmful[keep])) == 2 else "–"

    def rate(group: str, key: str) -> str:
        value = pooled[group][key]
        return "–" if value is None else f"{value:.3f}"

    print(f"{args.name} seed {args.seed}: multi-turn catch {rate('harmful_multi_turn', 'catch_rate')}, single-turn "
          f"{rate('harmful_single_turn', 'catch_rate')}, over-refusal {rate('benign', 'over_refusal')}, friction "
          f"{rate('benign', 'friction')}; AUROC multi-turn {auroc(harmful & multi)}, single-turn "
          f"{auroc(harmful & ~multi)}")

if __name__ == "__main__":
    main()
