"""Imports from a source checkout: `trajsafe_sdk.kernels` and `trajsafe_sdk.integrations` live in the repository's
top-level `kernels/` and `integrations/` folders, which an installation maps into the package (pyproject's
`package-dir`). Python run from the clone's root imports the local `trajsafe_sdk/` folder, which does not hold them;
there, a finder maps the two names onto the top-level folders. Installed packages (regular or editable) are left to
the usual import machinery.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

SUBPACKAGES = ("kernels", "integrations")  # trajsafe_sdk.<name> <- <repository>/<name>/


def source_folders(package_dir: Path) -> dict[str, Path]:
    """`{"trajsafe_sdk.kernels": <repo>/kernels, ...}` when `package_dir` is the `trajsafe_sdk/` folder of a source
    checkout (next to `pyproject.toml` and the top-level folders, without the subpackages inside), else `{}`."""
    root = package_dir.parent
    if not (root / "pyproject.toml").is_file():
        return {}
    return {f"{package_dir.name}.{name}": root / name for name in SUBPACKAGES
            if not (package_dir / name).exists() and (root / name / "__init__.py").is_file()}


class CheckoutFinder(MetaPathFinder):
    """Finds the mapped subpackages of a source checkout in their top-level folders."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def install(package_dir: Path) -> None:
    """Register a CheckoutFinder (once) when `package_dir` is a source checkout's package folder."""
    folders = source_folders(package_dir)
    if folders and not any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(CheckoutFinder(folders))
