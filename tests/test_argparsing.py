"""Every command's usage errors are one line and exit code 2 (not argparse's usage block): a bad flag, a bad choice,
a missing argument, a non-number."""

from __future__ import annotations

import pytest

from allconv import ablate, evaluate, train
from vis import cli

MAINS = {"allconv-train": train.main, "allconv-eval": evaluate.main, "allconv-ablate": ablate.main,
         "allconv-visualize": cli.main}
BAD = [["--bogus"], ["--amp", "sometimes"], ["--threads", "two"]]


@pytest.mark.parametrize("prog", MAINS)
@pytest.mark.parametrize("argv", BAD, ids=["unknown flag", "bad choice", "not a number"])
def test_usage_errors_are_one_line(prog: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        MAINS[prog]((["x.safetensors"] if prog == "allconv-eval" else []) + argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and not out
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and err.rstrip().endswith(f"see {prog} --help")


def test_missing_positional_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        evaluate.main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: the following arguments are required: runs; see allconv-eval --help\n"
