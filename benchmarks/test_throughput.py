"""Many concurrent conversations, each sending a 64-token turn at once (past 449 tokens), scored in batches."""

from __future__ import annotations

import numpy as np
import pytest

from trajsafe_sdk.bench import TURN_TOKENS, _filled_cache, _round_fn, past_tokens


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("conversations", [1, 16, 256])
def test_throughput(benchmark, models, conversations: int, batch: int) -> None:
    if batch > conversations:
        pytest.skip("batch larger than the number of conversations")
    monitor = models.main_monitor()
    past = past_tokens(8)
    rng = np.random.default_rng(11)
    # prefix KV filled with random values: latency does not depend on them
    caches = [_filled_cache(monitor, past, rng) for _ in range(conversations)]
    new = [rng.integers(28, int(models.arch["vocab_size"]), TURN_TOKENS) for _ in range(conversations)]
    one_round = _round_fn(monitor, caches, new, batch, past)
    benchmark.group = f"throughput, {conversations} conversations ({monitor.variant})"
    benchmark.pedantic(one_round, rounds=3 if conversations > 16 else 10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"conversations": conversations, "batch": batch, "variant": monitor.variant})
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["turns_per_s"] = conversations / benchmark.stats.stats.median
