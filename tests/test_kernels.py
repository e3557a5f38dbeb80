"""The ONNX monitor graph (`trajsafe_sdk.kernels`) against a numpy reference, itself, and transformers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trajsafe_sdk.core import length_feeds
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


def run(sess: ort.InferenceSession, arch: dict, ids: np.ndarray, scores: np.ndarray, past: dict | None = None,
        past_lengths: list[int] | None = None) -> dict[str, np.ndarray]:
    """One run; `past` are cache buffers [B, Hkv, C, D] (default: empty ones of capacity T)."""
    ids = np.atleast_2d(np.asarray(ids, np.int64))
    batch, t = ids.shape
    feeds = {"input_ids": ids, "score_positions": np.asarray(scores, np.int64),
             **length_feeds(past_lengths or [0] * batch, t)}
    feeds.update(past if past is not None else empty_past(arch, batch, t))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def full_feeds(arch: dict, length: int, scores: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(28, arch["vocab_size"], (1, length)), "score_positions": np.array([scores]),
            **length_feeds([0], length), **empty_past(arch, 1, length)}


def bnsh(x: np.ndarray) -> np.ndarray:
    """Reference keys/values [B, T, Hkv, D] -> the cache layout [B, Hkv, T, D]."""
    return x.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 4), (4, 1)])
def test_graph_matches_reference(heads: int, kv_heads: int) -> None:
    arch = tiny_arch(num_layers=2, num_heads=heads, num_kv_heads=kv_heads)
    weights = tiny_weights(arch, seed=1)
    sess = session(build_monitor_graph(weights, arch))
    feeds = full_feeds(arch, 40, [0, 7, 20, 39, 39])
    out = run(sess, arch, feeds["input_ids"], feeds["score_positions"])
    logits, keys, values = reference_forward(weights, arch, feeds["input_ids"], feeds["score_positions"])
    assert out["label_logits"].dtype == np.float32 and out["label_logits"].shape == (1, 5, 20)
    assert np.abs(out["label_logits"] - logits).max() <= FP32_TOL
    assert logits.std() > 0.5  # the tiny random model has logits that differ
    for i in range(arch["num_layers"]):
        assert np.abs(out[f"present_key.{i}"] - bnsh(keys[i])).max() <= FP32_TOL
        assert np.abs(out[f"present_value.{i}"] - bnsh(values[i])).max() <= FP32_TOL


def test_metadata(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert '"label_token_ids": [8,' in props["trajsafe.architecture"]
    assert props["trajsafe.kv_layout"] == "BNSH" and props["trajsafe.max_positions"] == "4096"
    names = [i.name for i in model.graph.input]
    assert names[:4] == ["input_ids", "seqlens_k", "total_sequence_length", "score_positions"]
    assert names[4:6] == ["past_key.0", "past_value.0"]
    assert [o.name for o in model.graph.output][:3] == ["label_logits", "present_key.0", "present_value.0"]


def test_incremental_equals_full(model: onnx.ModelProto, weights: dict, arch: dict) -> None:
    """Chunks fed one after another, each run's `present_*` fed back as the next `past_*` (capacity 64 > 50)."""
    sess = session(model)
    rng = np.random.default_rng(3)
    ids = rng.integers(28, arch["vocab_size"], (1, 50))
    cuts = [0, 17, 18, 41, 50]  # includes a single-token step
    past: dict[str, np.ndarray] = empty_past(arch, 1, 64)
    for name in past:  # unused capacity holds stale finite values in a real cache: they must get no weight
        past[name] += rng.standard_normal(past[name].shape).astype(np.float32) * 100
    ref_logits, ref_keys, ref_values = reference_forward(weights, arch, ids, np.arange(50)[None])
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        out = run(sess, arch, ids[:, start:end], np.arange(end - start)[None], past, [start])
        assert np.abs(out["label_logits"] - ref_logits[:, start:end]).max() <= FP32_TOL
        for i in range(arch["num_layers"]):
            assert np.abs(out[f"present_key.{i}"][:, :, :end] - bnsh(ref_keys[i][:, :end])).max() <= FP32_TOL
            assert np.abs(out[f"present_value.{i}"][:, :, :end] - bnsh(ref_values[i][:, :end])).max() <= FP32_TOL
        past = {f"past_{kind}.{i}": out[f"present_{kind}.{i}"] for i in range(arch["num_layers"])
                for kind in ("key", "value")}


def test_in_place_update_with_io_binding(model: onnx.ModelProto, weights: dict, arch: dict) -> None:
    """`present_*` bound to the memory of `past_*`: the buffers are updated in place (the runtime's path)."""
    sess = session(model)
    rng = np.random.default_rng(8)
    ids = rng.integers(28, arch["vocab_size"], (1, 30))
    ref_logits, ref_keys, _ = reference_forward(weights, arch, ids, np.arange(30)[None])
    buffers = empty_past(arch, 1, 40)
    for start, end in ((0, 12), (12, 30)):
        t = end - start
        binding = sess.io_binding()
        feeds = {"input_ids": ids[:, start:end], "score_positions": np.array([[t - 1]]), **length_feeds([start], t)}
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, buf in buffers.items():
            binding.bind_cpu_input(name, buf)
            binding.bind_output(name.replace("past_", "present_"), "cpu", 0, buf.dtype, list(buf.shape),
                                buf.ctypes.data)
        binding.bind_output("label_logits", "cpu")
        sess.run_with_iobinding(binding)
        logits = binding.get_outputs()[-1].numpy()  # bound last
        assert np.abs(logits[0, 0] - ref_logits[0, end - 1]).max() <= FP32_TOL
        for i in range(arch["num_layers"]):
            assert np.abs(buffers[f"past_key.{i}"][:, :, :end] - bnsh(ref_keys[i][:, :end])).max() <= FP32_TOL
            assert not buffers[f"past_key.{i}"][:, :, end:].any()  # nothing written past the new tokens


def test_padded_batch_equals_single_runs(model: onnx.ModelProto, arch: dict) -> None:
    """First reads of two conversations (10 and 6 tokens, the shorter right-padded) in one batch."""
    sess = session(model)
    rng = np.random.default_rng(4)
    lens = [10, 6]
    batch_ids = np.zeros((2, 10), np.int64)
    batch_scores = np.array([[0, 9], [0, 5]])
    singles = []
    for b, t in enumerate(lens):
        ids = rng.integers(28, arch["vocab_size"], (1, t))
        batch_ids[b, :t] = ids[0]
        singles.append(run(sess, arch, ids, batch_scores[b : b + 1]))
    out = run(sess, arch, batch_ids, batch_scores)
    for value in out.values():
        assert np.isfinite(value).all()
    for b, t in enumerate(lens):
        assert np.abs(out["label_logits"][b] - singles[b]["label_logits"][0]).max() <= FP32_TOL
        for i in range(arch["num_layers"]):
            for kind in ("key", "value"):
                got, want = out[f"present_{kind}.{i}"][b, :, :t], singles[b][f"present_{kind}.{i}"][0]
                assert np.abs(got - want).max() <= FP32_TOL


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
    out = run(sess, arch, ids, np.array([[6]]))
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
    out = run(session(model), arch, feeds["input_ids"], feeds["score_positions"])
    assert np.abs(out["label_logits"][0] - hf_logits).max() <= FP32_TOL
    cache = result.past_key_values
    for i in range(arch["num_layers"]):
        if hasattr(cache, "layers"):
            k, v = cache.layers[i].keys, cache.layers[i].values
        else:
            k, v = cache[i]
        assert np.abs(out[f"present_key.{i}"] - k.numpy()).max() <= FP32_TOL  # both BNSH
        assert np.abs(out[f"present_value.{i}"] - v.numpy()).max() <= FP32_TOL
