"""The server process behind ``allconv-app``: prepare, then run Streamlit's own command line in this process.

Preparing does what the first visitor's first page would otherwise wait for (over half of its 9.4 s on 2 cores,
profiled): importing the app's libraries (torch, pandas... and what the views import on first use, by running their
computations once: ``rehearse``) and decoding the default dataset into the array cache (``allconv.data``; a later
start maps it in ms). It runs before the server starts, not beside it: two threads importing the same packages can
deadlock on Python's import locks, and the first script run imports them.

    python -m app.serve run app/main.py [streamlit options]   # what allconv-app runs
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from typing import Iterator

from . import config, memory

VIEWS = ("app.views.filters", "app.views.image", "app.views.layer", "app.views.models", "app.views.sanity")
# warns, for each st.cache_data defined before the server starts, that it checked the options against the in-memory
# store; a call in the running server uses the server's store, as always
CACHE_LOGGER = "streamlit.runtime.caching.cache_data_api"
log = logging.getLogger("allconv.app")


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only errors from logger ``name`` for the duration (a filter: Streamlit sets its loggers' levels itself)."""
    logger = logging.getLogger(name)
    errors_only = logging.Filter()
    errors_only.filter = lambda record: record.levelno >= logging.ERROR  # type: ignore[method-assign]
    logger.addFilter(errors_only)
    try:
        yield
    finally:
        logger.removeFilter(errors_only)


def prepare() -> bool:
    """Import every view (and so the libraries behind them), ``rehearse`` their first computations, and decode the
    default dataset into the array cache; True where the dataset loaded. One that does not load is logged for the
    operator and left for the first page to report, in one line."""
    memory.map_large_blocks()  # before the dataset's big arrays, as app/main.py does before its first tensor
    with _quiet(CACHE_LOGGER):
        for name in VIEWS:
            importlib.import_module(name)
    rehearse()
    from allconv.data import load

    try:
        load(config.data_source() or None)
    except Exception as e:  # noqa: BLE001 - not the server's to refuse: the page names the problem and the fix
        log.warning("allconv-app: the default dataset did not load (%s: %s); the page will say so",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return False
    return True


def rehearse() -> None:
    """The Image view's computations once, on a random All-CNN-C and a blank image: what they import on first use
    (torchvision's ``make_grid``; ``autograd.grad``'s nested tensors, which import sympy; matplotlib's colormaps)
    loads now. A second of imports the first page would pay, found by profiling it; the results are dropped."""
    import torch

    from allconv.models import create

    from . import compute

    model, image = create("all-cnn-c").eval(), torch.zeros(3, 32, 32, dtype=torch.uint8)
    x = image[None].float()
    compute.reconstruction_grid(model, x, "conv1", "guided", filters=range(2))
    compute.filter_detail(model, x, image, "conv1", 0)


def main() -> None:
    """``python -m app.serve ARGS``: prepare, then ``streamlit ARGS``."""
    prepare()
    memory.freeze_libraries()  # so the first page's run does not collect (and freeze) every library's objects
    memory.trim()  # the decoded dataset is garbage now: its pages go back before the server starts
    from streamlit.web.cli import main as streamlit

    streamlit(prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
