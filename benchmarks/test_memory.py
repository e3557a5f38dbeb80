"""Memory: the cost of rebuilding an evicted session, and peak RSS of 1,000 pooled conversations under the budget."""

from __future__ import annotations

import numpy as np
import pytest

from trajsafe_sdk.bench import TURN_TOKENS, Plan, _message_text, kv_memory, pool_phase


@pytest.fixture(scope="module")
def session_at_turn_8(models):
    _, monitor = models.primary()
    rng = np.random.default_rng(3)
    texts = [_message_text(monitor.encoder, rng, TURN_TOKENS - 3) for _ in range(9)]
    session = monitor.new_session()
    session.extend([{"role": "user", "content": t} for t in texts[:8]])
    return session, {"role": "user", "content": texts[8]}


@pytest.mark.parametrize("evicted", [True, False], ids=["evicted", "resident"])
def test_rebuild_evicted_session(benchmark, models, session_at_turn_8, evicted: bool) -> None:
    session, follow = session_at_turn_8
    n = len(session.messages)

    def setup() -> None:
        session.truncate(n)
        if evicted:
            session.evict()

    benchmark.group = "next message of an 8-turn session: evicted (rebuild) vs resident"
    benchmark.pedantic(session.append, args=(follow,), setup=setup, rounds=20, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"tokens_before": session.num_tokens,
                                 "kv": kv_memory(session.monitor, models.context_limit)})


def test_pool_peak_rss(benchmark, models) -> None:
    package, monitor = models.primary()
    if package is None:
        pytest.skip("no package to fill the pool with")
    plan = Plan()
    result = {}

    def fill() -> None:
        result.update(pool_phase(package, monitor.variant, models.provider, models.threads, plan, quiet=True))

    benchmark.group = "pool: 1,000 conversations under the byte budget (fresh process)"
    benchmark.pedantic(fill, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
