"""The trained part of monitor v2: a small MLP head over frozen pretrained-trunk features at assessment points.

Input: the normalised outputs of `HeadConfig.layers` at each assessment point (`features.FeatureStore` rows),
concatenated. Output: the 20 label logits (5 actions, 13 categories, 2 risk). Loss: cross-entropy on the teacher's
action and category, soft cross-entropy on its risk; records are weighted so that every source family counts about
the same however many rows it has (templated synthetic data must not drown the real sources).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..labels import ACTIONS, CATEGORIES
from ..layout import MessageEncoder
from .train import record_messages

N_ACT, N_CAT = len(ACTIONS), len(CATEGORIES)


@dataclass
class HeadConfig:
    layers: tuple[int, ...] = (3, 5)
    hidden: int = 256
    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    dropout: float = 0.2
    family_balance: float = 0.5  # record weight ∝ family_size ** -family_balance
    action_weights: dict[str, float] = field(default_factory=lambda: {"allow": 1.0, "probe": 1.0, "steer": 1.0,
                                                                      "refuse": 1.0, "terminate": 1.0})
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Rows:
    """Assessment rows of a set of records: features, teacher targets, weights, owning record."""

    x: np.ndarray
    action: np.ndarray
    category: np.ndarray
    risk: np.ndarray
    weight: np.ndarray
    owner: np.ndarray


def select(features: np.ndarray, layers: Sequence[int], hidden: int) -> np.ndarray:
    """Columns of the chosen layers from stored features [n, all_layers * hidden]."""
    return np.concatenate([features[:, i * hidden:(i + 1) * hidden] for i in layers], axis=1)


def assessed_indices(record: dict[str, Any], encoder: MessageEncoder) -> list[int]:
    return [i for i, m in enumerate(record_messages(record)) if encoder.assesses(m)]


def build_rows(records: Sequence[dict[str, Any]], feats: Sequence[np.ndarray], encoder: MessageEncoder,
               layers: Sequence[int], hidden: int, family_balance: float = 0.5) -> Rows:
    fam_size = Counter(r.get("family", r.get("source", "?")) for r in records)
    xs, acts, cats, risks, ws, owners = [], [], [], [], [], []
    for k, (r, f) in enumerate(zip(records, feats, strict=True)):
        row_of = {m: j for j, m in enumerate(assessed_indices(r, encoder)) if j < len(f)}
        w = fam_size[r.get("family", r.get("source", "?"))] ** -family_balance
        picked = [(row_of[int(t["message_index"])], t) for t in r["targets"] if int(t["message_index"]) in row_of]
        if not picked:
            continue
        xs.append(select(f[[j for j, _ in picked]].astype(np.float32), layers, hidden))
        for _, t in picked:
            acts.append(ACTIONS.index(t["action"]))
            cats.append(CATEGORIES.index(t.get("category") or "benign"))
            risks.append(float(t["risk"]))
            ws.append(w / len(picked) ** 0.5)
            owners.append(k)
    weight = np.asarray(ws, np.float32)
    return Rows(np.concatenate(xs), np.asarray(acts), np.asarray(cats), np.asarray(risks, np.float32),
                weight / weight.mean(), np.asarray(owners))


def _mlp(d_in: int, cfg: HeadConfig) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(d_in, cfg.hidden), torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout),
                               torch.nn.Linear(cfg.hidden, N_ACT + N_CAT + 2))


def train_head(rows: Rows, cfg: HeadConfig) -> dict[str, np.ndarray]:
    """Train the head; returns its weights under the graph's names (`head.0.*`, `head.3.*`).

    Features are standardised per dimension while training (a pretrained trunk's residual stream has a few massive,
    nearly constant dimensions that would swamp the rest); the standardisation is folded into the first layer, so
    the exported head reads the graph's features as they are.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mean = rows.x.mean(0)
    std = rows.x.std(0) + 1e-3
    x = torch.from_numpy((rows.x - mean) / std)
    act, cat = torch.from_numpy(rows.action), torch.from_numpy(rows.category)
    risk, w = torch.from_numpy(rows.risk).clamp(0, 1), torch.from_numpy(rows.weight)
    model = _mlp(x.shape[1], cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    act_w = torch.tensor([cfg.action_weights[a] for a in ACTIONS], dtype=torch.float32)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            logits = model(x[idx])
            wi = w[idx]
            l_act = (F.cross_entropy(logits[:, :N_ACT], act[idx], weight=act_w, reduction="none") * wi).sum()
            l_act = l_act / (act_w[act[idx]] * wi).sum()
            l_cat = (F.cross_entropy(logits[:, N_ACT:N_ACT + N_CAT], cat[idx], reduction="none") * wi).sum() / wi.sum()
            logp = F.log_softmax(logits[:, N_ACT + N_CAT:], dim=-1)
            r = risk[idx]
            l_risk = ((-(1 - r) * logp[:, 0] - r * logp[:, 1]) * wi).sum() / wi.sum()
            loss = l_act + 0.5 * l_cat + l_risk
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    state = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    w0 = state["0.weight"] / std[None, :]
    return {"head.0.weight": w0.astype(np.float32), "head.0.bias": (state["0.bias"] - w0 @ mean).astype(np.float32),
            "head.3.weight": state["3.weight"].astype(np.float32), "head.3.bias": state["3.bias"].astype(np.float32)}


def head_logits(head: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The head's forward in numpy (what the graph computes): Linear, ReLU, Linear."""
    h = np.maximum(x @ head["head.0.weight"].T + head["head.0.bias"], 0.0)
    return h @ head["head.3.weight"].T + head["head.3.bias"]


def record_logits(head: dict[str, np.ndarray], feats: Sequence[np.ndarray], layers: Sequence[int],
                  hidden: int) -> list[np.ndarray]:
    """Label logits per record (one row per assessment point)."""
    return [head_logits(head, select(f.astype(np.float32), layers, hidden)) if len(f)
            else np.zeros((0, N_ACT + N_CAT + 2), np.float32) for f in feats]
