"""``allconv-app``: start the Streamlit app on localhost; extra arguments go to ``streamlit run``
(e.g. ``allconv-app --server.port 8600``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

MAIN = Path(__file__).resolve().parent / "main.py"
DEFAULTS = ["--server.fileWatcherType", "none", "--server.headless", "true", "--server.address", "localhost",
            "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "5"]


def command(argv: Sequence[str]) -> list[str]:
    """The ``streamlit run`` command line: our defaults, then the user's arguments (which win)."""
    return [sys.executable, "-m", "streamlit", "run", str(MAIN), *DEFAULTS, *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Replace this process with ``streamlit run app/main.py ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    cmd = command(args)
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
