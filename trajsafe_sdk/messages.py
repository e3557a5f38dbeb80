"""Validation and normalisation of OpenAI-style chat messages."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import MessageError

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system", "human": "user", "ai": "assistant", "function": "tool"}
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Message:
    """One normalised message: `role` is one of ROLES, `content` is text (always encodable: see `clean_text`)."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if isinstance(self.content, str) and not self.content.isascii():
            object.__setattr__(self, "content", clean_text(self.content))

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def clean_text(text: str) -> str:
    """`text` with lone surrogates (code points that cannot be encoded as UTF-8, e.g. from a JSON "\\ud800" escape)
    replaced by U+FFFD, so that every string can be tokenised and hashed."""
    return _SURROGATES.sub("\ufffd", text)


def _content_text(content: object, where: str, strict: bool = False) -> str:
    if isinstance(content, str):
        return content
    if content is None and not strict:
        return ""
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, Mapping) and "type" in part:
                continue  # images, audio...: not read by the monitor
            else:
                raise MessageError(f"{where}: content parts must be strings or {{'type': 'text', 'text': str}}")
        return "\n".join(texts)
    got = "null" if content is None else type(content).__name__
    raise MessageError(f"{where}: content must be a string (or a list of text parts), got {got}")


def to_message(obj: object, index: int = 0, strict: bool = False) -> Message:
    """Normalise one message given as a `Message`, a mapping or an object with `role`/`content` attributes.

    Content is read as text (lone surrogates replaced, see `clean_text`); `None` reads as empty text unless `strict`
    (the JSONL input contract of `trajsafe score`, docs/contracts.md §5, where non-string content is an error).
    """
    where = f"message {index}"
    if isinstance(obj, Message):
        return obj
    if isinstance(obj, Mapping):
        role, content = obj.get("role"), obj.get("content")
        if "role" not in obj or "content" not in obj:
            raise MessageError(f"{where}: expected keys 'role' and 'content', got {sorted(map(str, obj))}")
    elif hasattr(obj, "role") and hasattr(obj, "content"):
        role, content = obj.role, obj.content
    else:
        raise MessageError(f"{where}: expected a dict with 'role' and 'content', got {type(obj).__name__}")
    role = getattr(role, "value", role)  # enums (e.g. llama-index MessageRole)
    if not isinstance(role, str):
        raise MessageError(f"{where}: role must be a string, got {type(role).__name__}")
    role = ROLE_ALIASES.get(role.lower(), role.lower())
    if role not in ROLES:
        raise MessageError(f"{where}: unknown role {role!r}; expected one of system, developer, user, assistant, tool")
    return Message(role, _content_text(content, where, strict))


def normalize_messages(messages: object, strict: bool = False) -> list[Message]:
    """Validate a conversation (a list of messages, or a single user string); `strict` as in `to_message`."""
    if isinstance(messages, str):
        return [Message("user", messages)]
    if isinstance(messages, Mapping) or not isinstance(messages, Iterable):
        raise MessageError(f"expected a list of messages or a string, got {type(messages).__name__}")
    out = [to_message(m, i, strict) for i, m in enumerate(messages)]
    if not out:
        raise MessageError("the conversation is empty; expected at least one message")
    return out


def prefix_keys(messages: Sequence[Message], previous: str = "") -> list[str]:
    """Chained digests: key k identifies messages[:k+1] (continuing after the prefix whose key is `previous`)."""
    keys = []
    for m in messages:
        digest = hashlib.blake2b(previous.encode(), digest_size=16)
        digest.update(m.role.encode() + b"\x00" + m.content.encode("utf-8", "surrogatepass"))
        previous = digest.hexdigest()
        keys.append(previous)
    return keys


def prefix_key(messages: Sequence[Message]) -> str:
    """The digest identifying exactly `messages` (a conversation prefix)."""
    return prefix_keys(messages)[-1] if messages else ""
