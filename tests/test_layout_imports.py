"""The package imports from a clone's root too: `kernels/` and `integrations/` are top-level folders that an
installation maps into `trajsafe_sdk` (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy

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
