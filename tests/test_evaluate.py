"""``allconv-eval``: one checkpoint's accuracy, and the paper's Table 3 with ours beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from allconv import checkpoint as ckpt
from allconv import evaluate
from allconv.evaluate import accuracy
from allconv.models import create
from allconv.preprocess import Preprocess


@pytest.fixture
def run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    meta = ckpt.Meta(model="strided-cnn-a", classes=[str(i) for i in range(10)], dropout=False,
                     preprocess=Preprocess.fit("standardize", x), epoch=2, epochs=2, device="cpu x1",
                     metrics={"test_acc": 0.9, "val_acc": 0.91, "params": 839_242, "wall_s": 12.0, "img_per_s": 99.0})
    return ckpt.save(tmp_path / "run", create("strided-cnn-a", dropout=False), meta).parent


def test_table3_has_all_12_nets_with_ours_beside_the_paper(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert evaluate.main(["--table", str(run), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "table3.md").read_text().splitlines()
    assert len(md) == 2 + 12
    row = next(line for line in md if line.startswith("| strided-cnn-a "))
    assert "| 10.00 | 13.46 | 839,242 | 0.9M | 2 |" in row
    assert next(line for line in md if line.startswith("| all-cnn-c ")).startswith("| all-cnn-c | - | 9.08 |")
    assert (tmp_path / "t" / "table3.png").stat().st_size > 5000


def test_eval_one_checkpoint_on_an_npz(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "toy.npz", x_train=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), y_train=np.arange(4),
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=np.arange(20) % 10)
    assert evaluate.main([str(run), "--data", str(tmp_path / "toy.npz")]) == 0
    out = capsys.readouterr().out
    model, meta = ckpt.load(run)
    x = torch.from_numpy(np.load(tmp_path / "toy.npz")["x_test"]).permute(0, 3, 1, 2)
    acc = accuracy(model, x, torch.arange(20) % 10, meta.preprocess)
    assert f"accuracy {100 * acc:.2f}%" in out and "(20 images" in out and "validation accuracy" in out


def test_eval_bad_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    assert evaluate.main([str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a safetensors file (it looks like text)" in err and "\n" not in err


# --- bf16 at fp32's accuracy ---------------------------------------------------------------------------------------

class _CloseCall(torch.nn.Module):
    """Logits 1.0 and 1.003: bf16 (spacing 2^-7 at 1.0) rounds both to 1.0 and picks class 0; fp32 picks class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([1.0, 1.003]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def test_bf16_alone_gets_a_close_call_wrong_and_predict_rescores_it() -> None:
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    pre = Preprocess.fit("standardize", x)
    net = _CloseCall()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(pre(x)).argmax(1).tolist() == [0] * 6  # the failure the rescoring exists for
    assert evaluate.predict(net, x, pre).tolist() == [1] * 6
    assert evaluate.predict(net, x, pre, amp=True, batch_size=4).tolist() == [1] * 6
    assert accuracy(net, x, torch.ones(6, dtype=torch.long), pre, amp=True, tta=True) == 1.0


def test_bf16_predictions_equal_fp32_on_a_random_net() -> None:
    """A random-init net has near-uniform logits: many close calls, all rescored."""
    torch.manual_seed(0)
    net = create("all-cnn-c").eval()
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    pre = Preprocess.fit("standardize", x)
    for tta in (False, True):
        fp32 = evaluate.predict(net, x, pre, tta=tta, batch_size=32)
        assert torch.equal(evaluate.predict(net, x, pre, tta=tta, amp=True, batch_size=32), fp32)


def test_bf16_accuracy_equals_fp32_on_the_shipped_net(cifar10_test_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    from allconv.checkpoint import SHIPPED_DIR, load

    shipped = SHIPPED_DIR / "all-cnn-c.safetensors"
    if not shipped.is_file():
        pytest.skip("no shipped checkpoints/all-cnn-c.safetensors")
    model, meta = load(shipped)
    x = torch.from_numpy(cifar10_test_arrays[0][:1000]).permute(0, 3, 1, 2).contiguous()
    fp32 = evaluate.predict(model, x, meta.preprocess, tta=True)
    assert torch.equal(evaluate.predict(model, x, meta.preprocess, tta=True, amp=True), fp32)
