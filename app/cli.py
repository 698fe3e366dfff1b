"""``allconv-app``: start the Streamlit app on localhost. ``--checkpoint-dir DIR`` and ``--data-root DIR`` (each
repeatable) name the folders a visitor may open checkpoints and datasets from (see ``app.allow``); ``--torchvision
NAME[=WEIGHTS]`` (repeatable) offers a torchvision classifier beside them: ``resnet18`` (random init),
``resnet18=DEFAULT`` (torchvision's weights, downloaded once) or ``resnet18=FILE`` (a state dict; see ``app.zoo``).
Other arguments go to ``streamlit run`` (e.g. ``allconv-app --server.port 8600``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

MAIN = Path(__file__).resolve().parent / "main.py"
DEFAULTS = ["--server.fileWatcherType", "none", "--server.headless", "true", "--server.address", "localhost",
            "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "5", "--client.showErrorDetails", "none"]
FOLDER_FLAGS = {"--checkpoint-dir": "ALLCONV_CHECKPOINT_DIR", "--data-root": "ALLCONV_DATA_ROOT"}


def command(argv: Sequence[str]) -> list[str]:
    """The ``streamlit run`` command line, through ``app.serve`` (which prepares first): our defaults, then the user's
    arguments (which win)."""
    return [sys.executable, "-m", "app.serve", "run", str(MAIN), *DEFAULTS, *argv]


def folders(argv: Sequence[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Split our folder flags off ``argv``: (the rest for streamlit, ``environ`` with the folders added)."""
    ap = argparse.ArgumentParser(prog="allconv-app", add_help=False)
    for flag in FOLDER_FLAGS:
        ap.add_argument(flag, action="append", default=[])
    ap.add_argument("--torchvision", action="append", default=[])
    ours, rest = ap.parse_known_args(argv)
    env = dict(environ)
    if ours.torchvision:
        from allconv.errors import AllconvError

        from .zoo import ENV, check

        given = [_absolute(t) for t in ours.torchvision]
        text = ",".join([env.get(ENV, ""), *given]).strip(",")
        try:
            check(text)
        except AllconvError as e:
            raise SystemExit(f"allconv-app: {e}") from None
        env[ENV] = text
    for flag, var in FOLDER_FLAGS.items():
        given = getattr(ours, flag[2:].replace("-", "_"))
        missing = [d for d in given if not Path(d).expanduser().is_dir()]
        if missing:
            raise SystemExit(f"allconv-app: {flag} {missing[0]}: no such folder; give an existing directory")
        if given:
            old = [env[var]] if env.get(var) else []
            env[var] = os.pathsep.join(old + [str(Path(d).expanduser().resolve()) for d in given])
    return rest, env


def _absolute(item: str) -> str:
    """``NAME=FILE`` with FILE made absolute (the server may run elsewhere); ``NAME`` and ``NAME=DEFAULT`` as given."""
    name, _, weights = item.partition("=")
    if weights.strip() in ("", "DEFAULT"):
        return item
    return f"{name}={Path(weights.strip()).expanduser().resolve()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Replace this process with ``python -m app.serve run app/main.py ...`` (Streamlit's ``streamlit run``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    rest, env = folders(args, dict(os.environ))
    cmd = command(rest)
    os.execve(cmd[0], cmd, env)
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main())
