"""Many conversations: an LRU pool of trajectory sessions under a memory budget, with prefix matching.

A conversation is found by its id when the application has one, otherwise by the longest cached message prefix
(a stateless caller that re-sends the whole history pays only for the new messages). When the KV caches of all
sessions exceed `memory_budget_bytes`, the least recently used sessions drop their caches; their transcripts stay,
so the next call rebuilds them transparently (one re-read). Thread-safe: an anonymous session is matched and claimed
in one step under the pool lock, so two callers never share one: a caller whose match is claimed by another waits
for it, then matches again (it then continues the same conversation, or forks a diverged one).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from .core import Assessment, Monitor, TrajectorySession, _normalise
from .messages import Message, prefix_keys


class SessionPool:
    """Sessions keyed by conversation id or matched by message prefix, evicted LRU under a byte budget."""

    def __init__(self, monitor: Monitor, memory_budget_bytes: int = 512 * 2**20, max_conversations: int = 100_000):
        self.monitor = monitor
        self.memory_budget_bytes = memory_budget_bytes
        self.max_conversations = max_conversations
        self._sessions: OrderedDict[str, TrajectorySession] = OrderedDict()  # LRU order, oldest first
        self._prefix_index: dict[str, str] = {}  # prefix digest -> anonymous session key
        self._indexed: dict[str, tuple[list[Message], list[str]]] = {}  # key -> (messages, their digests)
        # key -> KV bytes at the session's last pool update, resident sessions only, least recently updated first:
        # the eviction order, so enforcing the budget never walks the sessions already evicted
        self._bytes: OrderedDict[str, int] = OrderedDict()
        self._total_bytes = 0  # running sum of _bytes (O(1) budget checks)
        self._key_of: dict[int, str] = {}  # id(session) -> key (a fork or a reset session is never mistaken for it)
        self._lock = threading.RLock()
        self._claimed: set[int] = set()  # id() of the anonymous sessions a caller is matching and reading now
        self._released = threading.Condition(self._lock)  # notified when a claim ends
        self._anon_counter = 0
        self.evictions = 0

    # -- lookup -------------------------------------------------------------------------------------------------
    def get(self, conversation_id: str) -> TrajectorySession:
        """The session of an explicit conversation id (created empty if new)."""
        with self._lock:
            key = f"id:{conversation_id}"
            session = self._sessions.get(key)
            if session is None:
                session = self.monitor.new_session()
                self._sessions[key] = session
                self._key_of[id(session)] = key
                self._drop_excess()
            self._sessions.move_to_end(key)
            return session

    def match(self, messages: Sequence[Message]) -> TrajectorySession:
        """The anonymous session holding the longest prefix of `messages` (forked if it has diverged)."""
        with self._lock:
            return self._match(messages)

    def _match(self, messages: Sequence[Message]) -> TrajectorySession:
        """`match`; the caller holds the pool lock."""
        keys = prefix_keys(messages)
        for k in range(len(keys) - 1, -1, -1):
            owner = self._prefix_index.get(keys[k])
            session = self._sessions.get(owner) if owner else None
            if session is None or session.common_prefix(messages) < k + 1:
                continue
            if session.common_prefix(messages) < len(session.messages):
                session = session.fork(k + 1)  # another branch still uses the original
                return self._add_anonymous(session)
            self._sessions.move_to_end(owner)  # type: ignore[arg-type]
            return session
        return self._add_anonymous(self.monitor.new_session())

    @contextmanager
    def _claim(self, messages: Sequence[Message], conversation_id: str | None,
               mine: set[int] | None = None) -> Iterator[TrajectorySession]:
        """The conversation's session, found and claimed atomically: an anonymous one is offered to no other caller
        until the block ends (a caller matching it meanwhile waits, then matches again). A session named by id is
        shared by design (its lock orders the callers). `mine`: the claims this caller already holds (returned
        again without waiting; the caller forks them). A caller holding claims never waits (two such callers could
        wait for each other): it continues on a pooled copy of the claimed session instead."""
        mine = mine if mine is not None else set()
        with self._released:
            if conversation_id is not None:
                session, claimed = self.get(conversation_id), False
            else:
                session = self._match(messages)
                while id(session) in self._claimed and id(session) not in mine:
                    if mine:
                        session = self._add_anonymous(session.fork())
                        break
                    self._released.wait()
                    session = self._match(messages)
                claimed = id(session) not in self._claimed
                self._claimed.add(id(session))
                if claimed:
                    mine.add(id(session))
        try:
            yield session
        finally:
            if claimed:
                with self._released:
                    self._claimed.discard(id(session))
                    mine.discard(id(session))
                    self._released.notify_all()

    def key_of(self, session: TrajectorySession) -> str | None:
        """The pool's name for a pooled session ('id:<conversation id>' or 'anon:<n>'); None if not pooled."""
        key = self._key_of.get(id(session))
        return key if key is not None and self._sessions.get(key) is session else None

    def _add_anonymous(self, session: TrajectorySession) -> TrajectorySession:
        self._anon_counter += 1
        key = f"anon:{self._anon_counter}"
        self._sessions[key] = session
        self._key_of[id(session)] = key
        self._index(key, session)
        self._drop_excess()
        return session

    def _index(self, key: str, session: TrajectorySession) -> None:
        """Index the session's prefixes; only messages added since the last call are hashed."""
        indexed, digests = self._indexed.get(key, ([], []))
        messages = session.messages
        n = 0
        while n < min(len(indexed), len(messages)) and indexed[n] is messages[n]:
            n += 1
        new = prefix_keys(messages[n:], digests[n - 1] if n else "")
        for digest in new:
            self._prefix_index[digest] = key
        self._indexed[key] = (list(messages), digests[:n] + new)

    # -- scoring ------------------------------------------------------------------------------------------------
    def assess(self, messages: object,
               conversation_id: str | None = None) -> tuple[TrajectorySession, list[Assessment]]:
        """Bring the conversation's session to exactly `messages`; Assessments of the messages read now."""
        msgs = _normalise(messages)
        with self._claim(msgs, conversation_id) as session:
            assessments = session.sync(msgs)
            self._after_update(session)
        return session, assessments

    def assess_many(self, requests: Sequence[tuple[object, str | None]]) -> list[list[Assessment]]:
        """Several conversations' new turns scored together in one batched run."""
        normalised = [(_normalise(m), cid) for m, cid in requests]
        sessions, new_parts = [], []
        seen: set[int] = set()
        mine: set[int] = set()
        with ExitStack() as claims:
            for msgs, cid in normalised:
                session = claims.enter_context(self._claim(msgs, cid, mine))
                if id(session) in seen:  # same conversation twice in one batch: keep it sequential
                    session = session.fork()
                seen.add(id(session))
                with session.lock:
                    n = session.common_prefix(msgs)
                    session.truncate(n)
                sessions.append(session)
                new_parts.append(msgs[n:])
            results = TrajectorySession.extend_batch(sessions, new_parts)
            for s in sessions:
                self._after_update(s)
        return results

    def _after_update(self, session: TrajectorySession) -> None:
        with self._lock:
            key = self.key_of(session)
            if key is not None:
                if key.startswith("anon:"):
                    self._index(key, session)
                self._account(key, session)
            self._enforce_budget(keep=session)

    # -- memory -------------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """KV bytes of the pooled sessions as of their last pool update (a running total)."""
        return self._total_bytes

    def _account(self, key: str, session: TrajectorySession | None) -> None:
        """Record a session's current KV bytes and make it the most recently updated (None: it left the pool)."""
        new = session.nbytes if session is not None else 0
        self._total_bytes += new - self._bytes.pop(key, 0)
        if new:
            self._bytes[key] = new

    def __len__(self) -> int:
        return len(self._sessions)

    def _enforce_budget(self, keep: TrajectorySession | None = None) -> None:
        """Evict the least recently updated resident sessions until the total fits the budget; the scan starts at
        the oldest resident session, so its cost is the number of sessions evicted (plus any skipped)."""
        skipped: set[str] = set()  # `keep`, and sessions busy in another thread
        while self._total_bytes > self.memory_budget_bytes:
            key = next((k for k in self._bytes if k not in skipped), None)
            if key is None:
                return
            session = self._sessions[key]
            if session is keep or not session.lock.acquire(blocking=False):
                skipped.add(key)
                continue
            try:
                session.evict()
                self.evictions += 1
                self._account(key, session)
            finally:
                session.lock.release()

    def _drop_excess(self) -> None:
        while len(self._sessions) > self.max_conversations:
            key, session = self._sessions.popitem(last=False)
            self._account(key, None)
            self._key_of.pop(id(session), None)
            for digest in self._indexed.pop(key, ([], []))[1]:
                if self._prefix_index.get(digest) == key:
                    del self._prefix_index[digest]
            session.evict()

    def reset(self, conversation_id: str) -> None:
        with self._lock:
            key = f"id:{conversation_id}"
            session = self._sessions.pop(key, None)
            self._account(key, None)
            if session is not None:
                self._key_of.pop(id(session), None)
                session.evict()
