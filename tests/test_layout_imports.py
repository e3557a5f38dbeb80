"""Packaging: the package imports from a clone's root too (`kernels/` and `integrations/` are top-level folders that
an installation maps into `trajsafe_sdk`), and an install requires exactly one ONNX Runtime build."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from trajsafe_sdk._checkout import source_folders

REPO = Path(__file__).resolve().parents[1]


def test_imports_from_the_clone_root_without_the_install_mapping() -> None:
    """What `pip install .` then `python` in the clone's root sees: the local `trajsafe_sdk/` folder first on
    sys.path, and no editable-install finder (`-S`: no .pth files); the dependencies come from site-packages."""
    site = str(Path(numpy.__file__).resolve().parents[1])
    code = (f"import sys; sys.path[:0] = ['', {site!r}]\n"
            "import trajsafe_sdk.kernels.tiny, trajsafe_sdk.integrations, trajsafe_sdk.package as package\n"
            "print(trajsafe_sdk.__file__); print(trajsafe_sdk.kernels.__file__)\n"
            "print(trajsafe_sdk.integrations.__file__); print(package.default_package_path(check=True))\n")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(REPO / "trajsafe_sdk" / "__init__.py"), str(REPO / "kernels" / "__init__.py"),
                                   str(REPO / "integrations" / "__init__.py"), str(REPO / "models" / "default")]


def test_checkout_mapping_only_in_a_checkout(tmp_path: Path) -> None:
    assert source_folders(REPO / "trajsafe_sdk") == {"trajsafe_sdk.kernels": REPO / "kernels",
                                                     "trajsafe_sdk.integrations": REPO / "integrations"}
    installed = tmp_path / "site-packages" / "trajsafe_sdk"  # a regular install holds the subpackages itself
    for name in ("kernels", "integrations"):
        (installed / name).mkdir(parents=True)
        (installed.parent / name).mkdir()  # unrelated top-level packages of the same names
        (installed.parent / name / "__init__.py").write_text("")
    assert source_folders(installed) == {}
    (installed.parent / "pyproject.toml").write_text("")
    assert source_folders(installed) == {}


# ---------------------------------------------------------------------------------------------------- onnxruntime
def setup_requirements(monkeypatch: pytest.MonkeyPatch, choice: str | None) -> list[str]:
    """The install_requires setup.py declares under TRAJSAFE_ONNXRUNTIME=choice (setuptools.setup captured)."""
    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    if choice is None:
        monkeypatch.delenv("TRAJSAFE_ONNXRUNTIME", raising=False)
    else:
        monkeypatch.setenv("TRAJSAFE_ONNXRUNTIME", choice)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return captured["install_requires"]


@pytest.mark.parametrize("platform", [("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"),
                                      ("win32", "AMD64")])
def test_exactly_one_onnxruntime_build_is_required(monkeypatch: pytest.MonkeyPatch, platform) -> None:
    """GPU build by default on Linux x86-64, the CPU build elsewhere or with TRAJSAFE_ONNXRUNTIME=cpu; never both."""
    env = {**default_environment(), "sys_platform": platform[0], "platform_machine": platform[1]}

    def onnxruntime(choice: str | None) -> list[str]:
        reqs = [Requirement(r) for r in setup_requirements(monkeypatch, choice)]
        return [r.name for r in reqs
                if r.name.startswith("onnxruntime") and (r.marker is None or r.marker.evaluate(env))]

    default = "onnxruntime-gpu" if platform == ("linux", "x86_64") else "onnxruntime"
    assert onnxruntime(None) == onnxruntime("auto") == [default]
    assert onnxruntime("cpu") == ["onnxruntime"] and onnxruntime("GPU") == ["onnxruntime-gpu"]
    with pytest.raises(SystemExit, match="expected one of auto, cpu, gpu"):
        onnxruntime("cuda")


def test_info_flags_both_onnxruntime_builds(tiny_package: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    from trajsafe_sdk import cli, runtime

    assert set(runtime.onnxruntime_distributions()) in ({"onnxruntime"}, {"onnxruntime-gpu"})
    monkeypatch.setattr(runtime, "onnxruntime_distributions", lambda: {"onnxruntime": "1", "onnxruntime-gpu": "1"})
    assert cli.main(["info", "--model", str(tiny_package), "--provider", "cpu"]) == 0
    assert any(line.startswith("WARNING ") and "onnxruntime and onnxruntime-gpu are both installed" in line
               for line in capsys.readouterr().out.splitlines())
