"""The trained part of monitor v2: the trajectory pool's projection and a small MLP head over frozen pretrained-trunk
features at assessment points.

Input: the normalised outputs of `HeadConfig.layers` at each assessment token, and the projection (`pool.weight`,
trained here) of the mean over the conversation so far of the normalised outputs of `HeadConfig.pool_layers`
(`features.FeatureStore` rows). Output: the 20 label logits (5 actions, 13 categories, 2 risk). Loss: cross-entropy
on the teacher's
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


@dataclass(frozen=True)
class FeatureLayout:
    """How stored features are laid out: `trunk` layers' token features, then the causal means of `pool` layers."""

    trunk: int
    pool: tuple[int, ...]
    hidden: int

    def token(self, features: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        return np.concatenate([features[:, i * self.hidden:(i + 1) * self.hidden] for i in layers], axis=1)

    def pooled(self, features: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        base = self.trunk * self.hidden
        cols = [features[:, base + self.pool.index(i) * self.hidden:base + (self.pool.index(i) + 1) * self.hidden]
                for i in layers]
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(features), 0), features.dtype)


@dataclass
class HeadConfig:
    layers: tuple[int, ...] = (4,)
    pool_layers: tuple[int, ...] = (2, 4)
    pool_width: int = 192  # the pool slot's width: KV heads x head dim
    hidden: int = 256
    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    dropout: float = 0.2
    family_balance: float = 0.5  # record weight ∝ family_size ** -family_balance
    calibration: str = "rows"  # policy thresholds fitted on: "rows" (a random slice) or "families" (unseen ones)
    calibration_groups: int = 3
    action_weights: dict[str, float] = field(default_factory=lambda: {"allow": 1.0, "probe": 1.0, "steer": 1.0,
                                                                      "refuse": 1.0, "terminate": 1.0})
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Rows:
    """Assessment rows of a set of records: token features, pooled inputs, teacher targets, weights, owner."""

    x: np.ndarray
    z: np.ndarray
    action: np.ndarray
    category: np.ndarray
    risk: np.ndarray
    weight: np.ndarray
    owner: np.ndarray


def assessed_indices(record: dict[str, Any], encoder: MessageEncoder) -> list[int]:
    return [i for i, m in enumerate(record_messages(record)) if encoder.assesses(m)]


def build_rows(records: Sequence[dict[str, Any]], feats: Sequence[np.ndarray], encoder: MessageEncoder,
               layout: FeatureLayout, cfg: HeadConfig) -> Rows:
    fam_size = Counter(r.get("family", r.get("source", "?")) for r in records)
    xs, zs, acts, cats, risks, ws, owners = [], [], [], [], [], [], []
    for k, (r, f) in enumerate(zip(records, feats, strict=True)):
        row_of = {m: j for j, m in enumerate(assessed_indices(r, encoder)) if j < len(f)}
        w = fam_size[r.get("family", r.get("source", "?"))] ** -cfg.family_balance
        picked = [(row_of[int(t["message_index"])], t) for t in r["targets"] if int(t["message_index"]) in row_of]
        if not picked:
            continue
        rows = f[[j for j, _ in picked]].astype(np.float32)
        xs.append(layout.token(rows, cfg.layers))
        zs.append(layout.pooled(rows, cfg.pool_layers))
        for _, t in picked:
            acts.append(ACTIONS.index(t["action"]))
            cats.append(CATEGORIES.index(t.get("category") or "benign"))
            risks.append(float(t["risk"]))
            ws.append(w / len(picked) ** 0.5)
            owners.append(k)
    weight = np.asarray(ws, np.float32)
    return Rows(np.concatenate(xs), np.concatenate(zs), np.asarray(acts), np.asarray(cats),
                np.asarray(risks, np.float32), weight / weight.mean(), np.asarray(owners))


class _Head(torch.nn.Module):
    def __init__(self, d_token: int, d_pool: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.pool = torch.nn.Linear(d_pool, cfg.pool_width, bias=False) if d_pool else None
        width = d_token + (cfg.pool_width if d_pool else 0)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, cfg.hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, N_ACT + N_CAT + 2))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x, self.pool(z)], dim=-1) if self.pool is not None else x)


def train_head(rows: Rows, cfg: HeadConfig) -> dict[str, np.ndarray]:
    """Train the head; returns its weights under the graph's names (`head.0.*`, `head.3.*`).

    Features are standardised per dimension while training (a pretrained trunk's residual stream has a few massive,
    nearly constant dimensions that would swamp the rest); the standardisation is folded into the first layer, so
    the exported head reads the graph's features as they are.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mean, std = rows.x.mean(0), rows.x.std(0) + 1e-3
    z_mean, z_std = rows.z.mean(0), rows.z.std(0) + 1e-3
    x = torch.from_numpy((rows.x - mean) / std)
    z = torch.from_numpy((rows.z - z_mean) / z_std)
    act, cat = torch.from_numpy(rows.action), torch.from_numpy(rows.category)
    risk, w = torch.from_numpy(rows.risk).clamp(0, 1), torch.from_numpy(rows.weight)
    model = _Head(x.shape[1], z.shape[1], cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    act_w = torch.tensor([cfg.action_weights[a] for a in ACTIONS], dtype=torch.float32)
    steps = cfg.epochs * ((len(x) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            logits = model(x[idx], z[idx])
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
    d = x.shape[1]
    w0 = state["mlp.0.weight"]
    w_token = w0[:, :d] / std[None, :]
    bias = state["mlp.0.bias"] - w_token @ mean
    out = {}
    if model.pool is not None:  # the pool reads raw means: P' = P / std, its offset P' mean goes into the bias
        pool = state["pool.weight"] / z_std[None, :]
        bias = bias - w0[:, d:] @ (pool @ z_mean)
        out["pool.weight"] = pool.astype(np.float32)
    return {**out, "head.0.weight": np.concatenate([w_token, w0[:, d:]], axis=1).astype(np.float32),
            "head.0.bias": bias.astype(np.float32), "head.3.weight": state["mlp.3.weight"].astype(np.float32),
            "head.3.bias": state["mlp.3.bias"].astype(np.float32)}


def head_logits(head: dict[str, np.ndarray], x: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
    """The head's forward in numpy (what the graph computes): pool projection, Linear, ReLU, Linear."""
    if "pool.weight" in head:
        x = np.concatenate([x, z @ head["pool.weight"].T], axis=1)
    h = np.maximum(x @ head["head.0.weight"].T + head["head.0.bias"], 0.0)
    return h @ head["head.3.weight"].T + head["head.3.bias"]


def record_logits(head: dict[str, np.ndarray], feats: Sequence[np.ndarray], layout: FeatureLayout,
                  cfg: HeadConfig) -> list[np.ndarray]:
    """Label logits per record (one row per assessment point)."""
    out = []
    for f in feats:
        f = f.astype(np.float32)
        out.append(head_logits(head, layout.token(f, cfg.layers), layout.pooled(f, cfg.pool_layers)) if len(f)
                   else np.zeros((0, N_ACT + N_CAT + 2), np.float32))
    return out
