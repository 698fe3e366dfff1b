"""Shared fixtures. The one place tests find the offline CIFAR-10 copy (../shared/data/cifar10.npz or $ALLCONV_CIFAR10),
and CIFAR-100 where it has been unpacked.

On a user's clone without it, tests that need it skip with a reason; under CI (CI=true) a missing dataset fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _cifar10_candidates() -> list[Path]:
    env = os.environ.get("ALLCONV_CIFAR10")
    paths = [Path(env)] if env else []
    return paths + [REPO.parent / "shared" / "data" / "cifar10.npz"]


@pytest.fixture(scope="session")
def cifar10_npz() -> Path:
    """Path of the reference CIFAR-10 archive; fails under CI, skips elsewhere when it is absent."""
    for p in _cifar10_candidates():
        if p.is_file():
            return p
    msg = f"CIFAR-10 offline copy not found (looked at {', '.join(map(str, _cifar10_candidates()))}; set ALLCONV_CIFAR10)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def cifar10_test_arrays(cifar10_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images as uint8 (N, 32, 32, 3) and their labels, straight from the archive."""
    with np.load(cifar10_npz) as d:
        return d["x_test"], d["y_test"].astype(np.int64)


@pytest.fixture(scope="session")
def cifar100_npz() -> Path:
    """The real CIFAR-100 as unpacked by ../shared/data/cifar100/unpack.py ($ALLCONV_CIFAR100 or
    ../shared/data/cifar100.npz); CI does not unpack it, so its absence skips everywhere."""
    from allconv.data import find_offline

    path = find_offline("cifar100")
    if path is None:
        pytest.skip("CIFAR-100 not unpacked (run ../shared/data/cifar100/unpack.py OUT.npz; set ALLCONV_CIFAR100=OUT.npz)")
    return path


@pytest.fixture
def cifar10(cifar10_npz: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CIFAR-10 copy as a ``--data`` argument, its decoded arrays cached in a temp dir (never the user's cache)."""
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path_factory.getbasetemp() / "allconv-cache"))
    return str(cifar10_npz)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The app tests' tiny checkpoint and dataset (see tests/appkit.py), made once per module."""
    from appkit import make_assets

    return make_assets(tmp_path_factory.mktemp("app"))


@pytest.fixture()
def env(assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The app pointed at the tiny assets only: the repository's shipped checkpoints and local runs are hidden."""
    from appkit import point_app

    return point_app(assets, monkeypatch)
