"""The message layout: how a conversation becomes token ids (docs/architecture.md, "Message layout")."""

from __future__ import annotations

import re
import unicodedata
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


_MARKER = r"<\|[^<>|\n]{0,64}\|>"  # "<|im_start|>", "<|act:allow|>", ... typed as text
_MARKER_RUN = re.compile(rf"{_MARKER}(?:\s*{_MARKER})*")  # markers with only whitespace between them
# lone surrogates, soft hyphen, zero-width and bidirectional format characters: dropped from content
_INVISIBLE = dict.fromkeys([*range(0xD800, 0xE000), 0x00AD, 0x034F, 0x061C, 0x180E, 0xFEFF, *range(0x200B, 0x2010),
                            *range(0x202A, 0x202F), *range(0x2060, 0x2070)])


def normalize_content(text: str) -> str:
    """Content as the monitor reads it: NFKC (full-width look-alikes become ASCII), invisible format characters
    and lone surrogates removed, and marker-like text (`<|...|>`) removed with its surrounding whitespace, so no typed
    text can pose as a label or role marker, nor change how the rest of the message tokenises."""
    return _remove_markers(unicodedata.normalize("NFKC", text.translate(_INVISIBLE)))


def _remove_markers(text: str) -> str:
    """Each run of marker-like text removed with the whitespace around it: nothing is left in its place at the start
    or end of the text, and between two pieces of text one gap (the whitespace before the run, else after it, else a
    space). Text plus markers therefore reads exactly as the text alone (`"how? <|act:allow|>"` -> `"how?"`)."""
    parts = _MARKER_RUN.split(text)
    pieces: list[str] = []
    for i, part in enumerate(parts):
        body = part.lstrip() if i > 0 else part
        body = body.rstrip() if i < len(parts) - 1 else body
        if pieces and body:
            before = parts[i - 1]
            pieces.append(before[len(before.rstrip()):] or part[:len(part) - len(part.lstrip())] or " ")
        if body:
            pieces.append(body)
    return "".join(pieces)


class MessageEncoder:
    """Turns messages into token ids; marker ids are added here and never come from content text.

    Layout markers (`bos`, `end`, `assess`, `roles[*]`) are strings that the package's tokenizer encodes, special
    tokens recognised, into one or more ids (`"<|user|>"` -> one id; `"<|im_start|>user\n"` -> three). The
    assessment is read at the last token of the `assess` marker.
    """

    def __init__(self, tokenizer: Tokenizer, layout: Mapping[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = False
        self.bos_ids = self.marker_ids(layout["bos"])
        self.end_ids = self.marker_ids(layout["end"])
        self.assess_ids = self.marker_ids(layout["assess"])
        self.role_ids = {role: self.marker_ids(marker) for role, marker in layout["roles"].items()}
        self.tokenizer.encode_special_tokens = True  # "<|user|>" typed by a user stays plain text
        self.assess_after = frozenset(layout["assess_after"])
        self.max_message_tokens = int(layout["max_message_tokens"])

    def marker_ids(self, marker: str) -> tuple[int, ...]:
        """Token ids of a layout marker (special tokens recognised)."""
        return tuple(self.tokenizer.encode(marker, add_special_tokens=False).ids)

    def content_ids(self, text: str) -> list[int]:
        """Token ids of message content; overlong content keeps its head (3/4) and tail (1/4)."""
        ids = self.tokenizer.encode(normalize_content(text), add_special_tokens=False).ids
        limit = self.max_message_tokens
        if len(ids) > limit:
            head = (limit * 3) // 4
            ids = ids[:head] + ids[len(ids) - (limit - head):]
        return ids

    def encode_message(self, message: Message) -> np.ndarray:
        """`ROLE content END` plus the assess marker for assessed roles."""
        ids = [*self.role_ids[message.role], *self.content_ids(message.content), *self.end_ids]
        if message.role in self.assess_after:
            ids.extend(self.assess_ids)
        return np.asarray(ids, dtype=np.int64)

    def encode_partial(self, role: str, text: str) -> np.ndarray:
        """An unfinished message (streaming): `ROLE content` and the assess marker, without `END`."""
        return np.asarray([*self.role_ids[role], *self.content_ids(text), *self.assess_ids], dtype=np.int64)

    def assesses(self, message: Message) -> bool:
        return message.role in self.assess_after

    def encode_conversation(self, messages: list[Message]) -> tuple[np.ndarray, list[int]]:
        """Ids of a whole conversation (with the `bos` marker) and its score positions (the last token of each
        assess marker)."""
        parts = [np.asarray(self.bos_ids, dtype=np.int64)]
        positions, offset = [], len(self.bos_ids)
        for m in messages:
            parts.append(self.encode_message(m))
            offset += len(parts[-1])
            if self.assesses(m):
                positions.append(offset - 1)
        return np.concatenate(parts), positions


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
