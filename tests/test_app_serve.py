"""app.serve: ``allconv-app``'s server prepares what the first page needs before it answers, then is Streamlit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from allconv import data
from allconv.data import load
from app import serve
from appkit import make_assets

def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "arrays").glob("*") if (p / "meta.json").exists())


def test_prepare_imports_every_view_and_caches_the_default_dataset(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_DATA", str(make_assets(tmp_path)["data"]))
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    assert serve.prepare()
    assert all(name in sys.modules for name in serve.VIEWS)
    (entry,) = _entries(tmp_path / "cache")
    assert {p.name for p in entry.iterdir()} >= {"x_train.npy", "x_test.npy", "meta.json"}
    monkeypatch.setattr(data, "_from_npz", lambda path: pytest.fail("the page decoded the dataset again"))
    assert load(str(tmp_path / "tiny.npz")).x_test.shape == (20, 3, 32, 32)  # the page's load: from the cache


FIRST_PAGE = """
import sys, torch
from allconv.models import create
from app import compute, serve
serve.prepare()
before = set(sys.modules)
model, image = create("model-c").eval(), torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
x = image[None].float() / 255
compute.reconstruction_grid(model, x, "conv6", "deconvnet", classes=[str(i) for i in range(10)])
compute.filter_detail(model, x, image, "conv7", 3)
print(sorted(set(sys.modules) - before))
"""


def test_after_preparing_the_image_views_computations_import_nothing(tmp_path: Path) -> None:
    """The point of ``rehearse``: what the first page computes (another net, layer and method here) loads no module
    the server has not loaded already (a fresh interpreter, so an earlier test's imports cannot hide one)."""
    env = {**os.environ, "ALLCONV_DATA": str(make_assets(tmp_path)["data"]), "ALLCONV_CACHE": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", FIRST_PAGE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_dataset_that_does_not_load_is_left_for_the_page_to_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    monkeypatch.setenv("ALLCONV_DATA", str(tmp_path / "broken.npz"))
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="allconv.app"):
        assert serve.prepare() is False
    assert _entries(tmp_path / "cache") == []
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["allconv-app: the default dataset did not load"]


def test_the_server_command_prepares_then_is_streamlit(tmp_path: Path) -> None:
    """``python -m app.serve ARGS`` is ``streamlit ARGS`` after preparing; no warning about the views' caches."""
    env = {**os.environ, "ALLCONV_DATA": str(make_assets(tmp_path)["data"]), "ALLCONV_CACHE": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-m", "app.serve", "version"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Streamlit, version" in out.stdout
    assert "No runtime found" not in out.stderr and "WARNING" not in out.stderr
    assert len(_entries(tmp_path / "c")) == 1
