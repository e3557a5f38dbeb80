"""Scoring and evaluation harness behind `trajsafe score` and `trajsafe eval` (docs/contracts.md §5-6).

Input is JSONL, one conversation per line: ``{"id": ..., "messages": [{"role", "content"}, ...]}`` plus, for
evaluation, ``"label": "harmful"|"benign"`` and optional ``"category"`` and ``"source"``. Lines are read lazily and
scored in chunks (default 64 lines), so memory does not grow with the number of lines. Whatever a line holds (invalid
UTF-8 or JSON, lone surrogates, deep nesting, huge numbers, non-finite ids), it yields a decision line or an error
record, and every output line is valid JSON (`result_json`). Inside a chunk, conversations
of similar length go together into batched runs (`TrajectorySession.extend_batch`; 16 per run on CUDA) and runs go
to worker threads (on CPU one per core, each run single-threaded: measured faster than multi-threaded or batched
runs of this small graph on CPU). A bad line becomes a `LineError` in place and the rest is still scored.

One `Decision` is taken after each user message with the package's default `Policy`, with per-conversation state
(sticky terminate, probe de-escalation); assistant messages are read as given. A conversation is read in one run
(causal attention makes that identical to reading it turn by turn); each decision's `tokens` are the tokens read
since the previous decision and its `latency_ms` is its share (by tokens) of the batched run's wall time.
Conversations longer than the context are read turn by turn instead, so the session re-windows as it would live.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from .core import Assessment, Monitor, TrajectorySession, read_alone_together
from .decision import DECISION_FIELDS, Decision
from .errors import MessageError, TrajSafeError
from .labels import CATEGORIES
from .messages import Message, clean_text, normalize_messages
from .policy import Policy
from .training.metrics import breakdown, conversation_metrics

LABELS = ("harmful", "benign")
BASELINES = ("last-message",)
CHUNK_LINES = 64
# measured: on CPU, batched runs of this graph cost more per token than single runs (padding, no fused kernels)
BATCH_SIZES = {"cpu": 1, "cuda": 16}


# ---------------------------------------------------------------------------------------------------- records
@dataclass
class Conversation:
    """One valid input line."""

    line: int
    id: Any
    messages: list[Message]
    label: str | None = None
    category: str | None = None
    source: str | None = None
    size: int = 0  # bytes of the input line (progress)
    fields: dict[str, Any] = field(default_factory=dict)  # extra input fields kept for breakdowns (`--by`)


@dataclass
class LineError:
    """One input line that could not be scored."""

    line: int
    id: Any
    error: str
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line, "error": self.error}


@dataclass
class Scored:
    """The decisions of one conversation (one per user message)."""

    conversation: Conversation
    decisions: list[Decision]
    tokens: int
    latency_ms: float

    @property
    def actions(self) -> list[str]:
        return [d.action for d in self.decisions]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.conversation.id, "decisions": [decision_dict(d) for d in self.decisions],
                "tokens": self.tokens, "latency_ms": round(self.latency_ms, 3)}


Result = Scored | LineError


def decision_dict(decision: Decision) -> dict[str, Any]:
    """`Decision.to_dict()` without its deep copy (the score dicts are fresh per Decision)."""
    return {k: getattr(decision, k) for k in DECISION_FIELDS}


def parse_line(raw: bytes | str, line: int, labelled: bool = False,
               fields: Sequence[str] = ()) -> Conversation | LineError:
    """Validate one JSONL line into a Conversation (keeping the top-level `fields`), or say what is wrong with it."""
    size = len(raw)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return LineError(line, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", size)
    text = raw.strip()
    if not text:
        return LineError(line, None, "empty line; expected a JSON object with 'messages'", size)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(line, None, f"invalid JSON: {exc.msg} at column {exc.colno}", size)
    except RecursionError:
        return LineError(line, None, "invalid JSON: nested too deeply", size)
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        return LineError(line, None, f"invalid JSON: {exc}", size)
    if not isinstance(obj, dict):
        return LineError(line, None, f"expected a JSON object with 'messages', got a JSON {_json_type(obj)}", size)
    conv_id = json_safe_id(obj.get("id"))
    if "messages" not in obj:
        return LineError(line, conv_id, "missing 'messages' (a list of {'role', 'content'} objects)", size)
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        return LineError(line, conv_id, f"'messages' must be a list, got a JSON {_json_type(raw_messages)}", size)
    try:
        messages = normalize_messages(raw_messages, strict=True)
    except MessageError as exc:
        return LineError(line, conv_id, str(exc), size)
    conv = Conversation(line, conv_id, messages, size=size)
    if labelled:
        label = obj.get("label")
        if label not in LABELS:
            return LineError(line, conv_id, f"'label' must be 'harmful' or 'benign', got {label!r}", size)
        for key in ("category", "source"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                return LineError(line, conv_id, f"'{key}' must be a string, got a JSON {_json_type(obj[key])}", size)
        if obj.get("category") is not None and obj["category"] not in CATEGORIES:
            return LineError(line, conv_id, f"unknown 'category' {obj['category']!r}; expected one of "
                                            f"{', '.join(CATEGORIES)}", size)
        conv.label, conv.source = label, obj.get("source")
        conv.category = obj.get("category") or ("benign" if label == "benign" else None)
    for key in fields:
        value = obj.get(key)
        conv.fields[key] = json_safe_id(value) if value is None or isinstance(value, str | int | float | bool) \
            else json_safe_id(_json_text(value))
    return conv


def json_safe_id(value: Any) -> Any:
    """`value` as it can be echoed in strict JSON: non-finite numbers become the strings "NaN", "Infinity" and
    "-Infinity", lone surrogates in text become U+FFFD, and a structure that cannot be written becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return value if _json_text(value) is not None else None


def _json_text(value: Any) -> str | None:
    """Strict JSON of `value`, or None when it has none (NaN, lone surrogates, too deep, too large a number)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        return None
    return text


def result_json(result: Result) -> tuple[str, LineError | None]:
    """The output line of `result` (strict JSON, ASCII) and, for an error record, its error; a result that cannot be
    written becomes an error record for its line."""
    try:
        return json.dumps(result.to_dict(), allow_nan=False), result if isinstance(result, LineError) else None
    except (ValueError, TypeError, RecursionError) as exc:
        line = result.line if isinstance(result, LineError) else result.conversation.line
        error = LineError(line, None, f"the result cannot be written as JSON ({exc})")
        return json.dumps(error.to_dict()), error


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its newline), lazily."""
    for number, raw in enumerate(stream, start=1):
        yield number, raw.rstrip(b"\r\n")


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------------- scoring
def default_workers() -> int:
    """Conversations scored in parallel on CPU: one per available core (each run single-threaded)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Scorer:
    """Scores conversations (batched runs of `batch_size`, spread over `workers` threads) into Decisions.

    Defaults: on CPU, batches of 1 and one worker per core (open the monitor with `threads=1`); on CUDA, batches of
    16 and one worker. `tokens` counts the tokens read so far.
    """

    def __init__(self, monitor: Monitor, policy: Policy | None = None, batch_size: int | None = None,
                 workers: int | None = None) -> None:
        self.monitor = monitor
        self.policy = policy or Policy.from_package(monitor.package.policy_defaults)
        self.batch_size = max(1, batch_size or BATCH_SIZES.get(monitor.provider, 1))
        self.workers = max(1, workers or (default_workers() if monitor.provider == "cpu" else 1))
        self.tokens = 0
        self._executor: ThreadPoolExecutor | None = None

    def score(self, conversations: Sequence[Conversation]) -> list[Result]:
        """Score a chunk; results in the input order."""
        tasks: list[list[int]] = []
        fitting: list[tuple[int, int]] = []  # (index, token count bound)
        for i, conv in enumerate(conversations):
            n = self._token_count(conv.messages)
            if n <= self.monitor.context_limit:
                fitting.append((i, n))
            else:
                tasks.append([i])  # read turn by turn
        fitting.sort(key=lambda x: x[1])  # similar lengths together: less padding
        tasks += [[i for i, _ in fitting[k:k + self.batch_size]] for k in range(0, len(fitting), self.batch_size)]

        def run(task: list[int]) -> list[Result]:
            batch = [conversations[i] for i in task]
            try:
                if len(batch) == 1 and self._token_count(batch[0].messages) > self.monitor.context_limit:
                    return [self._score_incremental(batch[0])]
                return self._score_batch(batch)
            except Exception as exc:  # noqa: BLE001 (a line never ends the run)
                return [LineError(c.line, c.id, f"cannot score: {_describe(exc)}", c.size) for c in batch]

        if self.workers > 1 and len(tasks) > 1:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="trajsafe-score")
            done = list(self._executor.map(run, tasks))
        else:
            done = [run(task) for task in tasks]
        results: dict[int, Result] = {}
        for task, task_results in zip(tasks, done, strict=True):
            for i, result in zip(task, task_results, strict=True):
                results[i] = result
                if isinstance(result, Scored):
                    self.tokens += result.tokens
        return [results[i] for i in range(len(conversations))]

    def close(self) -> None:
        """Stop the worker threads."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _token_count(self, messages: list[Message]) -> int:
        """Tokens of the whole conversation (exact when it could be near the context limit)."""
        encoder = self.monitor.encoder
        markers = max(map(len, encoder.role_ids.values())) + len(encoder.end_ids) + len(encoder.assess_ids)
        upper = len(encoder.bos_ids) + sum(len(m.content.encode("utf-8", "surrogatepass")) + markers
                                           for m in messages)  # byte-level BPE: at most a token per byte
        if upper <= self.monitor.context_limit:
            return upper
        return len(encoder.bos_ids) + sum(len(encoder.encode_message(m)) for m in messages)

    def _score_batch(self, batch: list[Conversation]) -> list[Result]:
        sessions = [self.monitor.new_session() for _ in batch]
        started = time.perf_counter()
        try:
            assessed = TrajectorySession.extend_batch(sessions, [c.messages for c in batch])
        except Exception as exc:  # noqa: BLE001 (a line never ends the run)
            if len(batch) == 1:
                return [LineError(batch[0].line, batch[0].id, f"cannot score: {_describe(exc)}", batch[0].size)]
            return [r for c in batch for r in self._score_batch([c])]  # isolate the failing line(s)
        elapsed = (time.perf_counter() - started) * 1000
        total = sum(s.num_tokens for s in sessions) or 1
        self._read_alone_ahead(a for got in assessed for a in got)
        out: list[Result] = []
        for conv, session, assessments in zip(batch, sessions, assessed, strict=True):
            share = elapsed * session.num_tokens / total
            ends = [span.end if span else 0 for span in session.spans]
            previous_end = 0
            decided = []
            for a in assessments:
                if a.role != "user":
                    continue
                end = ends[a.message_index]
                a.tokens = end - previous_end
                a.latency_ms = share * a.tokens / max(1, session.num_tokens)
                previous_end = end
                decided.append(a)
            try:  # the policy may read a message alone (the monotone-escalation floor)
                out.append(Scored(conv, self._decide(decided), session.num_tokens, share))
            except Exception as exc:  # noqa: BLE001 (a line never ends the run)
                out.append(LineError(conv.line, conv.id, f"cannot score: {_describe(exc)}", conv.size))
        return out

    def _score_incremental(self, conv: Conversation) -> Result:
        """Read turn by turn (the session re-windows when the context overflows)."""
        session = self.monitor.new_session()
        decided: list[Assessment] = []
        latency = 0.0
        try:
            for segment in _segments(conv.messages):
                started = time.perf_counter()
                assessments = session.extend(segment)
                latency += (time.perf_counter() - started) * 1000
                decided += [a for a in assessments if a.role == "user"]
            self._read_alone_ahead(decided)
            return Scored(conv, self._decide(decided), session.tokens_processed, latency)
        except Exception as exc:  # noqa: BLE001 (a line never ends the run)
            return LineError(conv.line, conv.id, f"cannot score: {_describe(exc)}", conv.size)

    def _decide(self, assessments: list[Assessment]) -> list[Decision]:
        state: dict[str, Any] = {}
        return [self.policy.decide(a, state) for a in assessments]

    def _read_alone_ahead(self, assessments: Iterable[Assessment]) -> None:
        """Under a policy that floors every user turn, read the messages alone now, batched."""
        if self.policy.floors_every_turn:
            read_alone_together(assessments)


def _describe(exc: BaseException) -> str:
    """An error for a record: the SDK's own errors say what is wrong; others are named (an internal failure)."""
    return str(exc) if isinstance(exc, TrajSafeError) else f"internal error ({type(exc).__name__}: {exc})"


def _segments(messages: list[Message]) -> Iterator[list[Message]]:
    """Messages cut after each user message (what a live guard reads before each decision)."""
    current: list[Message] = []
    for m in messages:
        current.append(m)
        if m.role == "user":
            yield current
            current = []
    if current:
        yield current


def score_lines(lines: Iterable[tuple[int, bytes]], scorer: Scorer, labelled: bool = False,
                chunk_lines: int = CHUNK_LINES, fields: Sequence[str] = ()) -> Iterator[Result]:
    """Parse and score numbered lines chunk by chunk; one Result per line, in order."""
    for chunk in chunked(lines, chunk_lines):
        parsed = [_parse_safely(raw, number, labelled, fields) for number, raw in chunk]
        valid = [p for p in parsed if isinstance(p, Conversation)]
        scored = iter(scorer.score(valid))
        for p in parsed:
            yield p if isinstance(p, LineError) else next(scored)


def _parse_safely(raw: bytes | str, line: int, labelled: bool, fields: Sequence[str]) -> Conversation | LineError:
    try:
        return parse_line(raw, line, labelled, fields)
    except Exception as exc:  # noqa: BLE001 (a line never ends the run)
        return LineError(line, None, f"cannot read the line: {_describe(exc)}", len(raw))


def last_message_baseline(conv: Conversation) -> list[Conversation]:
    """Every user message of `conv` alone, as its own one-message conversation."""
    return [Conversation(conv.line, conv.id, [m]) for m in conv.messages if m.role == "user"]


# ---------------------------------------------------------------------------------------------------- progress
class Progress:
    """A hand-written progress line on stderr (only on a TTY; appears after half a second)."""

    def __init__(self, total_bytes: int | None = None, enabled: bool = True, stream: IO[str] | None = None,
                 unit: str = "conversations") -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.total_bytes = total_bytes
        self.unit = unit
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.count = self.errors = self.bytes = 0
        self.drawn = False

    def update(self, count: int = 1, nbytes: int = 0, errors: int = 0) -> None:
        self.count += count
        self.bytes += nbytes
        self.errors += errors
        now = time.perf_counter()
        if self.enabled and now - self.started > 0.5 and now - self.last_draw > 0.1:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-9)
        text = f"{self.count} {self.unit} ({rate:,.0f}/s)"
        if self.errors:
            text += f", {self.errors} failed"
        if self.total_bytes:
            frac = min(1.0, self.bytes / self.total_bytes)
            filled = int(frac * 30)
            eta = (now - self.started) * (1 - frac) / frac if frac > 0 else math.inf
            text = f"[{'#' * filled}{'.' * (30 - filled)}] {frac:4.0%} " + text
            if math.isfinite(eta):
                text += f", {eta:.0f}s left"
        self.stream.write("\r" + text + "\033[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Per-conversation actions of the monitor (and of the baseline), ready for the §6 metrics."""

    items: list[dict[str, Any]] = field(default_factory=list)
    baseline_items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0


def evaluate(lines: Iterable[tuple[int, bytes]], scorer: Scorer, baseline: str | None = None,
             progress: Progress | None = None, chunk_lines: int = CHUNK_LINES,
             fields: Sequence[str] = ()) -> EvalResult:
    """Score labelled lines with the trajectory monitor (and the baseline); keep only labels, `fields`, actions."""
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {', '.join(BASELINES)}")
    result = EvalResult()
    started = time.perf_counter()
    tokens_before = scorer.tokens
    for chunk in chunked(lines, chunk_lines):
        scored = list(score_lines(chunk, scorer, labelled=True, chunk_lines=len(chunk), fields=fields))
        if baseline == "last-message":
            singles = [(s, last_message_baseline(s.conversation)) for s in scored if isinstance(s, Scored)]
            flat = scorer.score([c for _, group in singles for c in group])
            k = 0
            for s, group in singles:
                actions = []
                for r in flat[k:k + len(group)]:
                    actions.append(r.decisions[0].action if isinstance(r, Scored) and r.decisions else "allow")
                k += len(group)
                result.baseline_items.append(_item(s.conversation, actions))
        for s in scored:
            if isinstance(s, LineError):
                result.errors.append(s)
            else:
                result.items.append(_item(s.conversation, s.actions))
            if progress is not None:
                progress.update(1, s.size if isinstance(s, LineError) else s.conversation.size,
                                int(isinstance(s, LineError)))
    result.tokens = scorer.tokens - tokens_before
    result.seconds = time.perf_counter() - started
    return result


def _item(conv: Conversation, actions: list[str]) -> dict[str, Any]:
    return {**conv.fields, "id": conv.id, "label": conv.label, "category": conv.category, "source": conv.source,
            "actions": actions}


def metrics_report(items: list[dict[str, Any]], by: Sequence[str] = ("category", "source")) -> dict[str, Any]:
    """Overall §6 metrics plus breakdowns (a key is left out when no item carries it)."""
    report: dict[str, Any] = {"overall": conversation_metrics(items)}
    for key in by:
        if key == "category" or any(item.get(key) is not None for item in items):
            report[f"by_{key}"] = breakdown(items, key)
    return report


def eval_summary(result: EvalResult, by: Sequence[str] = ("category", "source")) -> dict[str, Any]:
    """The JSON document of `trajsafe eval --json` (without the run metadata)."""
    out: dict[str, Any] = {"conversations": len(result.items), "errors": len(result.errors),
                           "error_lines": [e.to_dict() for e in result.errors[:100]],
                           "tokens": result.tokens, "seconds": round(result.seconds, 3),
                           "monitor": metrics_report(result.items, by)}
    if result.baseline_items:
        out["baseline"] = {"name": "last-message", **metrics_report(result.baseline_items, by)}
    return out


# ---------------------------------------------------------------------------------------------------- tables
COLUMNS = (("n", None), ("harmful", None), ("benign", None), ("catch", "catch_rate"), ("block", "block_rate"),
           ("over-refusal", "over_refusal"), ("friction", "friction"), ("earliness", "earliness_median"))


def _cells(name: str, m: Mapping[str, Any]) -> list[str]:
    c = m["counts"]
    cells = [name, str(c["harmful"] + c["benign"]), str(c["harmful"]), str(c["benign"])]
    for _, key in COLUMNS[3:]:
        value = m[key]
        cells.append("n/a" if value is None else f"{value:.3f}" if key != "earliness_median" else f"{value:.1f}")
    return cells


def markdown_table(rows: Sequence[tuple[str, Mapping[str, Any]]], first: str = "group") -> str:
    """A Markdown table of §6 metrics, one row per (name, metrics)."""
    header = [first] + [name for name, _ in COLUMNS]
    body = [_cells(name, m) for name, m in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in body)])


def format_report(summary: Mapping[str, Any]) -> str:
    """Human-readable (Markdown) tables of `eval_summary` output."""
    mon, base = summary["monitor"], summary.get("baseline")
    parts = []
    rows = [("trajectory monitor", mon["overall"])]
    if base:
        rows.append(("baseline: last message alone", base["overall"]))
    parts.append(markdown_table(rows, "overall"))
    for title, report in (("", mon), (", baseline: last message alone", base)):
        if not report:
            continue
        for key in [k for k in report if k.startswith("by_")]:
            parts.append(f"by {key[3:]}{title}\n\n" + markdown_table(list(report[key].items()), key[3:]))
    return "\n\n".join(parts)

