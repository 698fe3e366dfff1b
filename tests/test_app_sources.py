"""What the app opens: checkpoints and datasets (the allowlist against hostile links), their error paths, and the
pieces without Streamlit (sources, scans, config, the ``allconv-app`` command)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from allconv.checkpoint import save
from allconv.errors import AllconvError
from allconv.models import create
from allconv.preprocess import Preprocess
from app.allow import NO_CHECKPOINT, NO_DATASET
from appkit import MAIN, captions, errors, ok, png_bytes, png_header, run


def offer(monkeypatch: pytest.MonkeyPatch, var: str, *folders: Path) -> None:
    """The operator offers ``folders`` through ``var`` (ALLCONV_CHECKPOINT_DIR or ALLCONV_DATA_ROOT)."""
    monkeypatch.setenv(var, os.pathsep.join(map(str, folders)))


# --- Checkpoints and data: error paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,message", [
    ("missing", "checkpoint not found"),
    ("corrupt", "corrupt or truncated"),
    ("foreign", "not an allconv checkpoint"),
    ("pickle", "never unpickles"),
])
def test_bad_checkpoint_path_is_one_error(env: dict[str, Path], tmp_path: Path, kind: str, message: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside an allowed folder, a bad file gets its own message, naming the file but not the server's path."""
    from safetensors.torch import save_file

    offer(monkeypatch, "ALLCONV_CHECKPOINT_DIR", env["ckpts"], tmp_path)

    path = tmp_path / f"{kind}.safetensors"
    if kind == "corrupt":
        path.write_bytes(env["ckpt"].read_bytes()[:5000])
    elif kind == "foreign":
        save_file({"w": torch.zeros(3)}, str(path))
    elif kind == "pickle":
        path = tmp_path / "weights.pt"
        torch.save({"w": torch.zeros(3)}, path)
    at = run()
    at.sidebar.text_input(key="checkpoint_path").input(str(path)).run()
    assert not at.exception
    assert len(errors(at)) == 1 and message in errors(at)[0], errors(at)
    assert str(tmp_path) not in errors(at)[0] and path.name in errors(at)[0]
    assert "Pick a checkpoint" in at.info[0].value
    at.segmented_control(key="view").set_value("Models").run()  # the rest keeps working
    assert at.dataframe[0].value.shape[0] == 12


def test_no_checkpoint_says_how_to_get_one(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import app.sources

    monkeypatch.setattr(app.sources, "checkpoint_choices", lambda: {})
    at = run()
    assert not at.exception
    assert not errors(at) and len(at.warning) == 1 and "allconv-train --model all-cnn-c" in at.warning[0].value
    at.segmented_control(key="view").set_value("Models").run()
    assert at.dataframe[0].value["paper error %"].tolist()[-1] == 9.08


def test_without_shipped_checkpoint_the_newest_run_is_picked(env: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import app.sources
    from allconv.checkpoint import load

    model, meta = load(env["ckpt"])
    for age, name in enumerate(["new", "old"]):
        f = save(tmp_path / "runs" / name, model, meta)
        os.utime(f, (1e9 - age, 1e9 - age))
    monkeypatch.setattr(app.sources, "REPO", tmp_path)
    monkeypatch.delenv("ALLCONV_CHECKPOINT")
    at = ok(run())
    assert at.sidebar.selectbox(key="checkpoint").value == "runs/new"
    assert "runs/old" in at.sidebar.selectbox(key="checkpoint").options


def test_typed_run_directory_works(env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from allconv.checkpoint import load

    offer(monkeypatch, "ALLCONV_CHECKPOINT_DIR", env["ckpts"], tmp_path)
    model, meta = load(env["ckpt"])
    save(tmp_path / "run1", model, meta)
    at = run({"checkpoint_path": str(tmp_path / "run1")})
    assert captions(ok(at))[0] == "tiny test #0 (airplane)"


def test_missing_dataset_is_one_error_and_upload_still_works(env: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_DATA", str(env["root"] / "nowhere.npz"))
    at = run()
    assert not at.exception
    assert len(errors(at)) == 1 and "dataset" in errors(at)[0] and "not found" in errors(at)[0]
    assert "upload one" in at.info[0].value
    at.sidebar.file_uploader(key="upload").upload("red.png", png_bytes(), "image/png")
    at.run()
    assert captions(at)[0].startswith("uploaded red.png: 50x40 RGBA") and len(at.image) == 6
    at.segmented_control(key="view").set_value("Layer").run()
    assert "needs a dataset" in at.info[0].value


@pytest.mark.parametrize("name", ["other.npz", "ABS"])
def test_dataset_text_field_overrides_env(env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          name: str) -> None:
    """A dataset under an operator's data root opens by its name there or by its full path."""
    x = np.full((4, 32, 32, 3), 7, np.uint8)
    np.savez(tmp_path / "other.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    offer(monkeypatch, "ALLCONV_DATA_ROOT", tmp_path)
    at = run({"data": str(tmp_path / "other.npz") if name == "ABS" else name})
    assert captions(ok(at))[0] == "other test #0 (0)"

# --- Hostile links: the allowlist ----------------------------------------------------------------------------------

SERVER_PATH = re.compile(r"(?<![\w.])/(?:etc|proc|usr|dev|tmp|root|home|work)\b")


def page_text(at: AppTest) -> str:
    """Everything a visitor can read on the page."""
    parts = [*at.error, *at.warning, *at.info, *at.caption, *at.markdown, *at.exception, *at.subheader]
    return "\n".join(str(getattr(p, "value", p)) for p in parts)


def outside_files(tmp_path: Path, env: dict[str, Path]) -> dict[str, Path]:
    """A real checkpoint and dataset outside every allowed root, and links to them from inside the roots."""
    out = tmp_path / "outside"
    out.mkdir()
    shutil.copy(env["ckpt"], out / "real.safetensors")
    shutil.copy(env["ckpt"].with_suffix(".json"), out / "real.json")
    shutil.copy(env["data"], out / "real.npz")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "link.safetensors").symlink_to(out / "real.safetensors")
    (inside / "linkdir").symlink_to(out)
    (inside / "link.npz").symlink_to(out / "real.npz")
    return {"out": out, "inside": inside}


HOSTILE_CHECKPOINTS = ["/etc/passwd", "../../../../etc/passwd", "/proc/self/environ", "/etc/no-such-file",
                       "~/.bashrc", "/dev/zero", "OUT/real.safetensors", "IN/link.safetensors",
                       "IN/linkdir/real.safetensors", "IN/../outside/real.safetensors"]


@pytest.mark.parametrize("link", HOSTILE_CHECKPOINTS)
def test_hostile_checkpoint_links_get_one_neutral_message(env: dict[str, Path], tmp_path: Path, link: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything outside the allowed folders, existing or not, links included: the same message, nothing echoed."""
    where = outside_files(tmp_path, env)
    offer(monkeypatch, "ALLCONV_CHECKPOINT_DIR", env["ckpts"], where["inside"])
    link = link.replace("OUT", str(where["out"])).replace("IN", str(where["inside"]))
    for query in ({"checkpoint_path": link}, {"checkpoint": link}):
        at = run(query)
        assert not at.exception and errors(at) == [NO_CHECKPOINT], (query, errors(at))
        assert not SERVER_PATH.search(page_text(at)) and str(tmp_path) not in page_text(at)


def test_a_run_whose_model_file_links_out_is_refused(env: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    where = outside_files(tmp_path, env)
    run_dir = where["inside"] / "run1"
    run_dir.mkdir()
    (run_dir / "model.safetensors").symlink_to(where["out"] / "real.safetensors")
    offer(monkeypatch, "ALLCONV_CHECKPOINT_DIR", env["ckpts"], where["inside"])
    at = run({"checkpoint_path": str(run_dir)})
    assert not at.exception and errors(at) == [NO_CHECKPOINT]


def test_a_run_whose_model_file_links_inside_the_folders_opens(env: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Only links *out* of the offered folders are refused: a run's model file may link to a checkpoint inside."""
    where = outside_files(tmp_path, env)
    shutil.copy(env["ckpt"], where["inside"] / "kept.safetensors")
    run_dir = where["inside"] / "run2"
    run_dir.mkdir()
    (run_dir / "model.safetensors").symlink_to(where["inside"] / "kept.safetensors")
    offer(monkeypatch, "ALLCONV_CHECKPOINT_DIR", env["ckpts"], where["inside"])
    at = run({"checkpoint_path": str(run_dir)})
    assert not at.exception and errors(at) == [] and at.subheader, errors(at)


def test_a_checkpoint_link_to_a_huge_file_is_refused_unread(env: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GB that would take seconds to read
    offer(monkeypatch, "ALLCONV_CHECKPOINT_DIR", env["ckpts"], tmp_path)
    at = run({"checkpoint_path": str(big)})
    assert not at.exception and errors(at) == ["that checkpoint is 2.0 GB; the app opens checkpoints up to 1 GB"]


def test_a_checkpoint_of_exactly_the_size_cap_opens(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from app import allow

    size = env["ckpt"].stat().st_size
    monkeypatch.setattr(allow, "MAX_CHECKPOINT_BYTES", size)  # the cap is inclusive: a file of its size opens
    assert allow.open_checkpoint(str(env["ckpt"]), {}) == env["ckpt"].resolve()
    monkeypatch.setattr(allow, "MAX_CHECKPOINT_BYTES", size - 1)
    with pytest.raises(AllconvError, match="the app opens checkpoints up to"):
        allow.open_checkpoint(str(env["ckpt"]), {})


HOSTILE_DATA = ["/", "/usr", "/etc/passwd", "../../..", "~", "/proc/self/environ", "OUT/real.npz", "IN/link.npz",
                "IN/../outside/real.npz", "cifar10/../../../etc"]


@pytest.mark.parametrize("link", HOSTILE_DATA)
def test_hostile_dataset_links_are_refused_without_a_walk(env: dict[str, Path], tmp_path: Path, link: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import app.cache

    where = outside_files(tmp_path, env)
    offer(monkeypatch, "ALLCONV_DATA_ROOT", where["inside"])
    loads: list[object] = []
    monkeypatch.setattr(app.cache, "load_data", lambda source: loads.append(source))
    at = run({"data": link.replace("OUT", str(where["out"])).replace("IN", str(where["inside"]))})
    assert not at.exception and errors(at) == [f"dataset: {NO_DATASET}"], errors(at)
    assert loads == [] and not SERVER_PATH.search(page_text(at)) and str(tmp_path) not in page_text(at)
    assert len(at.image) == 0 or "upload" in at.info[0].value  # the page stays usable: an upload still works


def test_the_operators_dataset_path_stays_on_the_server(env: dict[str, Path]) -> None:
    at = ok(run())
    field = at.sidebar.text_input(key="data")
    assert field.value == "" and field.placeholder == "the server's dataset (tiny.npz)"
    assert captions(at)[0] == "tiny test #0 (airplane)"


def test_without_a_data_root_only_names_and_the_operators_dataset_open(env: dict[str, Path], tmp_path: Path) -> None:
    from app import allow

    np.savez(tmp_path / "x.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8), y_train=[0, 1])
    assert allow.open_dataset("") == "" and allow.open_dataset("cifar100") == "cifar100"
    assert allow.open_dataset(f" {env['data']} ") == str(env["data"])  # ALLCONV_DATA, the operator's choice
    for bad in (str(tmp_path / "x.npz"), "x.npz", "a\x00b"):
        with pytest.raises(AllconvError, match="not one this server offers|not a valid path"):
            allow.open_dataset(bad)


def test_an_unexpected_error_is_one_neutral_line(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import app.views.image

    def boom(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied", "/root/secret")

    monkeypatch.setattr(app.views.image, "render", boom)
    at = run()
    assert not at.exception and len(errors(at)) == 1 and "PermissionError" in errors(at)[0]
    assert "/root" not in page_text(at)


def test_scrub_cuts_server_paths(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from app import allow

    offer(monkeypatch, "ALLCONV_DATA_ROOT", env["root"] / "data")
    (env["root"] / "data").mkdir(exist_ok=True)
    assert allow.scrub(f"{env['ckpts']}/a.safetensors is corrupt") == "ckpts/a.safetensors is corrupt"
    assert allow.scrub(f"{env['root']}/data/x.npz: no labels") == "data/x.npz: no labels"
    assert allow.scrub("cannot read /etc/shadow (errno 13)") == "cannot read (a server path) (errno 13)"
    assert allow.scrub("conv6/conv9 at 3/4 of fp32/bf16") == "conv6/conv9 at 3/4 of fp32/bf16"


def test_the_layer_views_scan_sizes_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 images (ALLCONV_SCAN_LIMIT's default: a CIFAR test split, whole); at most 500 at a torchvision model's
    input (224 px: 49x the work per image), as the README says."""
    from types import SimpleNamespace

    from app import cache, config
    from app.views import layer

    monkeypatch.delenv("ALLCONV_SCAN_LIMIT", raising=False)
    monkeypatch.setattr(cache, "fitted", lambda _src, _split, limit, size, _resize, images: images[:limit])
    data = SimpleNamespace(x_test=torch.zeros(10_001, 3, 32, 32, dtype=torch.uint8))
    ours = SimpleNamespace(data=data, net=SimpleNamespace(size=32, resize=None), split="test", source="")
    assert len(layer._images(ours, config.scan_limit())) == 10_000
    torchvision = SimpleNamespace(data=data, net=SimpleNamespace(size=224, resize=256), split="test", source="")
    assert len(layer._images(torchvision, config.scan_limit())) == 500
    assert len(layer._images(torchvision, 20)) == 20


def test_scrub_cuts_a_path_to_its_innermost_root(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from app import allow

    outer, inner = env["root"] / "outer", env["root"] / "outer" / "deep" / "inner"
    inner.mkdir(parents=True)
    offer(monkeypatch, "ALLCONV_DATA_ROOT", outer, inner)  # one root inside another: the nearer name is shown
    assert allow.scrub(f"{inner}/x.npz: no labels") == "inner/x.npz: no labels"
    assert allow.scrub(f"{outer}/deep/y.npz: no labels") == "outer/deep/y.npz: no labels"


# --- Pieces without Streamlit --------------------------------------------------------------------------------------

def test_app_scan_reports_progress_and_equals_the_fp32_scan(env: dict[str, Path]) -> None:
    from app import scans
    from vis import figure2

    model = create("all-cnn-c").eval()
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8)
    pre = Preprocess.fit("standardize", images)
    seen: list[tuple[int, int]] = []
    chunked = scans.compute(model, images, pre, "conv3", "test", progress=lambda d, t: seen.append((d, t)), chunk=10)
    whole = figure2.scan(model, images, pre, layer="conv3", top_k=10, progress=False, amp="off")
    assert seen == [(10, 23), (20, 23), (23, 23)] and chunked.num_images == 23
    np.testing.assert_array_equal(chunked.values, whole.values)
    np.testing.assert_array_equal(chunked.image_index, whole.image_index)
    np.testing.assert_array_equal(chunked.boxes, whole.boxes)


def test_sources_and_config(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from allconv.data import load
    from app import config, sources

    assert sources.label(env["ckpt"]) in sources.checkpoint_choices()
    splits = load(env["data"])
    picked = sources.from_dataset(splits, "x", "test", "cat", 1)
    assert picked.image.shape == (3, 32, 32) and picked.label == 3 and picked.key == "data:x:test:13"
    with pytest.raises(AllconvError, match="out of range"):
        sources.from_dataset(splits, "x", "test", "cat", 2)
    with pytest.raises(AllconvError, match="unknown class"):
        sources.class_indices(splits, "test", "zebra")
    up = sources.from_upload("g.png", png_bytes((7, 9), "L"))
    with pytest.raises(AllconvError, match="42123x1187 pixels; the limit is 50 megapixels"):
        sources.from_upload("edge.png", png_header(42123, 1187))  # 50,000,001 pixels: one over (header only)
    assert up.image.shape == (3, 32, 32) and up.image.dtype == torch.uint8
    monkeypatch.setenv("ALLCONV_SCAN_LIMIT", "1")  # the smallest limit there is
    assert config.scan_limit() == 1
    monkeypatch.setenv("ALLCONV_SCAN_LIMIT", "0")
    with pytest.raises(AllconvError, match="positive integer"):
        config.scan_limit()
    monkeypatch.delenv("ALLCONV_SCAN_LIMIT")
    assert config.scan_limit() == config.DEFAULT_SCAN_LIMIT


def test_cli_command_passes_args_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import cli

    cmd = cli.command(["--server.port", "8999"])
    assert cmd[1:4] == ["-m", "app.serve", "run"] and cmd[4].endswith("app/main.py")
    assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none" and cmd[-2:] == ["--server.port", "8999"]
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execve", lambda exe, args, environ: calls.append(args))
    assert cli.main(["--server.port", "8999"]) == 0 and calls == [cmd]
    assert cli.main(["--help"]) == 0


def test_cli_folder_flags_offer_folders(tmp_path: Path) -> None:
    from app import cli

    rest, env = cli.folders(["--checkpoint-dir", str(tmp_path), "--server.port", "1", "--data-root", str(tmp_path),
                             "--checkpoint-dir", "."], {"ALLCONV_CHECKPOINT_DIR": "/old"})
    assert rest == ["--server.port", "1"]
    assert env["ALLCONV_CHECKPOINT_DIR"] == os.pathsep.join(["/old", str(tmp_path), str(Path.cwd())])
    assert env["ALLCONV_DATA_ROOT"] == str(tmp_path)
    with pytest.raises(SystemExit, match="--data-root .*nowhere: no such folder"):
        cli.folders(["--data-root", str(tmp_path / "nowhere")], {})


def test_streamlit_config() -> None:
    import tomllib

    cfg = tomllib.loads((MAIN.parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none" and cfg["server"]["maxUploadSize"] == 5
    assert cfg["server"]["headless"] is True and cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] == "none"  # no traceback reaches a visitor
