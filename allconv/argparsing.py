"""The command lines' argument parser: argparse, but a usage error is one line (``error: ...; see PROG --help``)
and exit code 2, like every other bad input, instead of argparse's usage block."""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")
