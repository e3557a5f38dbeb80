"""The ONNX monitor graph (`trajsafe_sdk.kernels`) against a numpy reference, itself, and transformers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trajsafe_sdk.kernels.graph import build_monitor_graph, empty_past
from trajsafe_sdk.kernels.reference import reference_forward
from trajsafe_sdk.kernels.tiny import build_tiny_package, tiny_arch, tiny_weights
from trajsafe_sdk.kernels.variants import check_parity, op_counts, optimize, quantize_int8, to_fp16

FP32_TOL = 1e-4
# Variants vs fp32, as max |label logit diff| / std(label logits) on the tiny random model (logit std ~2-3).
FP16_REL_TOL = 0.02
INT8_REL_TOL = 0.15


@pytest.fixture(scope="module")
def arch() -> dict:
    return tiny_arch(num_layers=2)


@pytest.fixture(scope="module")
def weights(arch: dict) -> dict:
    return tiny_weights(arch, seed=0)


@pytest.fixture(scope="module")
def model(weights: dict, arch: dict) -> onnx.ModelProto:
    return build_monitor_graph(weights, arch)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, arch: dict, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray,
        scores: np.ndarray, past: dict | None = None) -> dict[str, np.ndarray]:
    feeds = {"input_ids": np.asarray(ids, np.int64), "position_ids": np.asarray(positions, np.int64),
             "attention_mask": np.asarray(mask, np.int64), "score_positions": np.asarray(scores, np.int64)}
    feeds.update(past if past is not None else empty_past(arch, feeds["input_ids"].shape[0]))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def full_feeds(arch: dict, length: int, scores: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(28, arch["vocab_size"], (1, length)), "position_ids": np.arange(length)[None],
            "attention_mask": np.ones((1, length), np.int64), "score_positions": np.array([scores]),
            **empty_past(arch, 1)}


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (4, 1)])
@pytest.mark.parametrize("split", [False, True])
def test_graph_matches_reference(heads: int, kv_heads: int, split: bool) -> None:
    arch = tiny_arch(num_layers=2, num_heads=heads, num_kv_heads=kv_heads)
    weights = tiny_weights(arch, seed=1)
    sess = session(build_monitor_graph(weights, arch, split_attention=split))
    feeds = full_feeds(arch, 40, [0, 7, 20, 39, 39])
    out = run(sess, arch, feeds["input_ids"], feeds["position_ids"], feeds["attention_mask"], feeds["score_positions"])
    logits, keys, values = reference_forward(weights, arch, feeds["input_ids"], feeds["score_positions"])
    assert out["label_logits"].dtype == np.float32 and out["label_logits"].shape == (1, 5, 20)
    assert np.abs(out["label_logits"] - logits).max() <= FP32_TOL
    assert logits.std() > 0.5  # the tiny random model has logits that differ
    for i in range(arch["num_layers"]):
        assert np.abs(out[f"new_key.{i}"] - keys[i]).max() <= FP32_TOL
        assert np.abs(out[f"new_value.{i}"] - values[i]).max() <= FP32_TOL


def test_metadata(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert '"label_token_ids": [8,' in props["trajsafe.architecture"]
    names = [i.name for i in model.graph.input]
    assert names[:4] == ["input_ids", "position_ids", "attention_mask", "score_positions"]
    assert names[4:6] == ["past_key.0", "past_value.0"]
    assert [o.name for o in model.graph.output][:3] == ["label_logits", "new_key.0", "new_value.0"]


@pytest.mark.parametrize("split", [False, True])
def test_incremental_equals_full(split: bool, weights: dict, arch: dict) -> None:
    sess = session(build_monitor_graph(weights, arch, split_attention=split))
    rng = np.random.default_rng(3)
    ids = rng.integers(28, arch["vocab_size"], (1, 50))
    cuts = [0, 17, 18, 41, 50]  # includes a single-token step
    past: dict[str, np.ndarray] = empty_past(arch, 1)
    ref_logits, ref_keys, ref_values = reference_forward(weights, arch, ids, np.arange(50)[None])
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        out = run(sess, arch, ids[:, start:end], np.arange(start, end)[None], np.ones((1, end), np.int64),
                  np.arange(end - start)[None], past)
        assert np.abs(out["label_logits"] - ref_logits[:, start:end]).max() <= FP32_TOL
        for i in range(arch["num_layers"]):
            assert np.abs(out[f"new_key.{i}"] - ref_keys[i][:, start:end]).max() <= FP32_TOL
            past[f"past_key.{i}"] = np.concatenate([past[f"past_key.{i}"], out[f"new_key.{i}"]], axis=1)
            past[f"past_value.{i}"] = np.concatenate([past[f"past_value.{i}"], out[f"new_value.{i}"]], axis=1)


def test_batch_with_padding_equals_single_runs(model: onnx.ModelProto, arch: dict) -> None:
    """Two conversations with past lengths 10 and 6 (the shorter one right-padded) and 8 / 5 new tokens."""
    sess = session(model)
    rng = np.random.default_rng(4)
    past_lens, new_lens, max_p, max_t = [10, 6], [8, 5], 10, 8
    singles, batch_past = [], {}
    batch_ids = np.zeros((2, max_t), np.int64)
    batch_pos = np.zeros((2, max_t), np.int64)
    batch_mask = np.zeros((2, max_p + max_t), np.int64)
    batch_scores = np.zeros((2, 2), np.int64)
    pasts = []
    for b, (p, t) in enumerate(zip(past_lens, new_lens, strict=True)):
        ids = rng.integers(28, arch["vocab_size"], (1, p + t))
        first = run(sess, arch, ids[:, :p], np.arange(p)[None], np.ones((1, p)), np.array([[p - 1]]))
        past = {f"past_{kind}.{i}": first[f"new_{kind}.{i}"] for i in range(arch["num_layers"])
                for kind in ("key", "value")}
        pasts.append(past)
        scores = np.array([[0, t - 1]])
        singles.append(run(sess, arch, ids[:, p:], np.arange(p, p + t)[None], np.ones((1, p + t)), scores, past))
        batch_ids[b, :t] = ids[0, p:]
        batch_pos[b, :t] = np.arange(p, p + t)
        batch_mask[b, :p] = 1
        batch_mask[b, max_p:max_p + t] = 1
        batch_scores[b] = scores[0]
    for name in pasts[0]:
        padded = np.zeros((2, max_p, arch["num_kv_heads"], arch["head_dim"]), np.float32)
        for b, p in enumerate(past_lens):
            padded[b, :p] = pasts[b][name][0]
        batch_past[name] = padded
    out = run(sess, arch, batch_ids, batch_pos, batch_mask, batch_scores, batch_past)
    for value in out.values():
        assert np.isfinite(value).all()  # padded rows (even fully masked ones) give no NaN
    for b, t in enumerate(new_lens):
        assert np.abs(out["label_logits"][b] - singles[b]["label_logits"][0]).max() <= FP32_TOL
        for i in range(arch["num_layers"]):
            assert np.abs(out[f"new_key.{i}"][b, :t] - singles[b][f"new_key.{i}"][0]).max() <= FP32_TOL
            assert np.abs(out[f"new_value.{i}"][b, :t] - singles[b][f"new_value.{i}"][0]).max() <= FP32_TOL


def test_fully_masked_row_is_finite(model: onnx.ModelProto, arch: dict) -> None:
    out = run(session(model), arch, np.zeros((1, 4)), np.zeros((1, 4)), np.zeros((1, 4)), np.array([[0, 3]]))
    assert all(np.isfinite(v).all() for v in out.values())


def test_fp16_variant(model: onnx.ModelProto, arch: dict) -> None:
    fp16 = to_fp16(model)
    kinds = {i.name: i.type.tensor_type.elem_type for i in fp16.graph.input}
    assert kinds["past_key.0"] == onnx.TensorProto.FLOAT16
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    feeds = full_feeds(arch, 60, [3, 30, 59], seed=5)
    ref = session(model).run(["label_logits"], feeds)[0]
    assert check_parity(model, fp16, feeds) <= FP16_REL_TOL * ref.std()


def test_int8_variant(model: onnx.ModelProto, arch: dict, tmp_path) -> None:
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, src)
    quantize_int8(src, dst)
    assert op_counts(dst)["MatMulInteger"] + op_counts(dst)["DynamicQuantizeMatMul"] > 0
    feeds = full_feeds(arch, 60, [3, 30, 59], seed=6)
    ref = session(model).run(["label_logits"], feeds)[0]
    assert check_parity(model, dst, feeds) <= INT8_REL_TOL * ref.std()


def test_optimize_is_exact_and_fuses_norms(model: onnx.ModelProto, arch: dict, tmp_path) -> None:
    src, dst = tmp_path / "fp32.onnx", tmp_path / "opt.onnx"
    onnx.save(model, src)
    optimize(src, dst, "cpu")
    assert op_counts(dst)["SimplifiedLayerNormalization"] == 2 * arch["num_layers"] + 1
    assert check_parity(model, dst, full_feeds(arch, 33, [0, 32])) <= 1e-5


def test_tiny_package(tmp_path) -> None:
    import time

    from trajsafe_sdk.package import MonitorPackage

    start = time.perf_counter()
    folder = build_tiny_package(tmp_path / "pkg")
    assert time.perf_counter() - start < 10
    pkg = MonitorPackage.load(folder)
    assert set(pkg.variants()) == {"fp32", "int8"}
    assert pkg.architecture["label_token_ids"] == list(range(8, 28))
    sess = ort.InferenceSession(str(pkg.onnx_path("int8")), providers=["CPUExecutionProvider"])
    arch = pkg.architecture
    ids = np.array([[1, 3, 40, 41, 42, 6, 7]])
    out = run(sess, arch, ids, np.arange(7)[None], np.ones((1, 7)), np.array([[6]]))
    assert out["label_logits"].shape == (1, 1, 20)


def test_transformers_parity(weights: dict, arch: dict, model: onnx.ModelProto) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=arch["vocab_size"], hidden_size=arch["hidden_size"], intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_kv_heads"], head_dim=arch["head_dim"], rope_theta=arch["rope_theta"],
        rms_norm_eps=arch["rms_norm_eps"], tie_word_embeddings=True, max_position_embeddings=4096,
        attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(config).eval()
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state)
    length = 300
    feeds = full_feeds(arch, length, [0, 99, 200, 299], seed=7)
    with torch.no_grad():
        result = hf(torch.from_numpy(feeds["input_ids"]), use_cache=True)
    hf_logits = result.logits[0, feeds["score_positions"][0]][:, arch["label_token_ids"]].numpy()
    out = run(session(model), arch, feeds["input_ids"], feeds["position_ids"], feeds["attention_mask"],
              feeds["score_positions"])
    assert np.abs(out["label_logits"][0] - hf_logits).max() <= FP32_TOL
    cache = result.past_key_values
    for i in range(arch["num_layers"]):
        if hasattr(cache, "layers"):
            k, v = cache.layers[i].keys, cache.layers[i].values
        else:
            k, v = cache[i]
        assert np.abs(out[f"new_key.{i}"] - k.numpy().transpose(0, 2, 1, 3)).max() <= FP32_TOL
        assert np.abs(out[f"new_value.{i}"] - v.numpy().transpose(0, 2, 1, 3)).max() <= FP32_TOL
