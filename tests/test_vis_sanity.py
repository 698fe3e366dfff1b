"""vis.sanity: rank/linear correlations done in torch, and the cascading randomization check."""

from __future__ import annotations

import math

import pytest
import torch

from allconv.errors import AllconvError
from allconv.models import create
from vis.sanity import _mean, pearson, randomization_check, spearman


def _spearman_by_hand(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        return [sum(w < x for w in v) + (sum(w == x for w in v) + 1) / 2 for x in v]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den


def test_correlations() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 3.0, 2.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    b = torch.tensor([[0.0, 1.0, 1.0, 9.0, 4.0, 0.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    got = spearman(a, b)
    assert got[0].item() == pytest.approx(_spearman_by_hand(a[0].tolist(), b[0].tolist()), abs=1e-12)
    assert got[1].item() == pytest.approx(-1.0)
    assert spearman(a, a.exp()).tolist() == pytest.approx([1.0, 1.0])  # monotone: rank correlation 1
    assert pearson(a, 2 * a + 1).tolist() == pytest.approx([1.0, 1.0])
    assert pearson(a, torch.zeros_like(a)).isnan().all()  # a blank map against a real one: undefined, not 0
    assert pearson(torch.zeros(1, 4), torch.zeros(1, 4)).tolist() == [1.0]  # identical constant maps
    assert _mean(torch.tensor([float("nan"), 0.5, 0.25])) == 0.375 and math.isnan(_mean(torch.full((2,), math.nan)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create("all-cnn-c").eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x)[:, 5] > 0).all()  # class 5 is live for both images, so its maps are not all zero
    return model, x


def test_randomization_check(setup) -> None:
    model, x = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = randomization_check(model, x, layer=None, channel=5, methods=("guided", "backprop"), seed=0)
    assert res.stages[:3] == ["trained", "conv9", "conv9..conv8"] and res.stages[-1] == "conv9..conv1"
    assert len(res.stages) == 10
    for m in ("guided", "backprop"):
        assert res.maps[m].shape == (10, 2, 3, 12, 12)
        assert res.spearman[m][0] == pytest.approx(1.0) and res.pearson[m][0] == pytest.approx(1.0)
        assert len(res.spearman[m]) == len(res.pearson[m]) == 10
        assert res.pearson[m][-1] < 0.9  # every conv re-initialized: the map has changed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input model is untouched
    again = randomization_check(model, x, layer=None, channel=5, methods=("backprop",), seed=0)
    assert torch.equal(again.maps["backprop"], res.maps["backprop"])  # seeded


def test_layers_above_the_target_do_not_matter(setup) -> None:
    model, x = setup
    res = randomization_check(model, x, layer="conv4", channel=1, methods=("deconvnet",))
    assert res.stages.index("conv9..conv5") == 5
    assert res.pearson["deconvnet"][:6] == pytest.approx([1.0] * 6)  # conv9..conv5 are above conv4
    assert torch.equal(res.maps["deconvnet"][5], res.maps["deconvnet"][0])


def test_randomization_errors(setup) -> None:
    model, x = setup
    with pytest.raises(AllconvError, match="unknown method"):
        randomization_check(model, x, layer="conv1", channel=0, methods=("lrp",))
    with pytest.raises(AllconvError, match="out of range"):
        randomization_check(model, x, layer="conv1", channel=500)
