"""The message layout: how a conversation becomes token ids (docs/architecture.md, "Message layout")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .labels import ACTIONS, CATEGORIES, RISK_LABELS
from .messages import Message

SPECIAL_TOKENS: list[str] = [
    "<pad>", "<|bos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<|assess|>",
]
LABEL_TOKENS: list[str] = (
    [f"<|act:{a}|>" for a in ACTIONS] + [f"<|cat:{c}|>" for c in CATEGORIES] + [f"<|risk:{r}|>" for r in RISK_LABELS]
)
ALL_SPECIAL_TOKENS = SPECIAL_TOKENS + LABEL_TOKENS
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}


def default_layout(max_message_tokens: int = 512) -> dict[str, Any]:
    """The `layout` section of `monitor.json` for the fixed special-token order."""
    return {
        "special_tokens": {tok: i for i, tok in enumerate(ALL_SPECIAL_TOKENS)},
        "roles": dict(ROLE_TOKENS),
        "bos": "<|bos|>",
        "end": "<|end|>",
        "assess": "<|assess|>",
        "pad": "<pad>",
        "assess_after": ["user", "assistant"],
        "label_tokens": list(LABEL_TOKENS),
        "max_message_tokens": max_message_tokens,
    }


class MessageEncoder:
    """Turns messages into token ids; marker ids are added here and never come from content text."""

    def __init__(self, tokenizer: Tokenizer, layout: Mapping[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True  # "<|user|>" typed by a user stays plain text
        ids = layout["special_tokens"]
        self.bos_id = int(ids[layout["bos"]])
        self.end_id = int(ids[layout["end"]])
        self.assess_id = int(ids[layout["assess"]])
        self.pad_id = int(ids[layout.get("pad", "<pad>")])
        self.role_ids = {role: int(ids[tok]) for role, tok in layout["roles"].items()}
        self.assess_after = frozenset(layout["assess_after"])
        self.max_message_tokens = int(layout["max_message_tokens"])

    def content_ids(self, text: str) -> list[int]:
        """Token ids of message content; overlong content keeps its head (3/4) and tail (1/4)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        limit = self.max_message_tokens
        if len(ids) > limit:
            head = (limit * 3) // 4
            ids = ids[:head] + ids[len(ids) - (limit - head):]
        return ids

    def encode_message(self, message: Message) -> np.ndarray:
        """`ROLE content <|end|>` plus `<|assess|>` for assessed roles."""
        ids = [self.role_ids[message.role], *self.content_ids(message.content), self.end_id]
        if message.role in self.assess_after:
            ids.append(self.assess_id)
        return np.asarray(ids, dtype=np.int64)

    def encode_partial(self, role: str, text: str) -> np.ndarray:
        """An unfinished message (streaming): `ROLE content <|assess|>` without `<|end|>`."""
        return np.asarray([self.role_ids[role], *self.content_ids(text), self.assess_id], dtype=np.int64)

    def assesses(self, message: Message) -> bool:
        return message.role in self.assess_after

    def encode_conversation(self, messages: list[Message]) -> tuple[np.ndarray, list[int]]:
        """Ids of a whole conversation (with `<|bos|>`) and the positions of its `<|assess|>` tokens."""
        parts = [np.asarray([self.bos_id], dtype=np.int64)] + [self.encode_message(m) for m in messages]
        ids = np.concatenate(parts)
        return ids, [int(i) for i in np.flatnonzero(ids == self.assess_id)]


def train_tokenizer(texts: list[str] | object, vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer whose first ids are the layout's special tokens, in order."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=ALL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, tok in enumerate(ALL_SPECIAL_TOKENS):
        assert tokenizer.token_to_id(tok) == i, f"special token {tok} got id {tokenizer.token_to_id(tok)}"
    return tokenizer
