"""A mutation run's saved state (``bench/mutation.py --state DIR``), so a run of hours can stop at any moment and go on.

The folder holds the tree's fingerprint (every snapshot file's path and bytes), the baseline (each test file's time and
which tests run each library line) and one JSON line per finished mutant, appended and flushed as it ends. A run over
the same tree skips what is recorded; a folder made from another tree is refused, since its results would be stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mutants import Mutant


@dataclass
class Result:
    out: str  # passed | failed | timeout | error N
    secs: float
    failed: list[str] = field(default_factory=list)  # node ids the log lists as failed


def fingerprint(tree: Path) -> str:
    """sha256 of every file's path and bytes under ``tree`` (symlinks not followed)."""
    h = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()):
        h.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def key(m: Mutant, redo: bool = False) -> str:
    return f"{'redo ' if redo else ''}{m.path}:{m.start}:{m.end}:{m.new}"


class Journal:
    """The state folder, or nothing at all (``folder=None``: a run that keeps nothing)."""

    def __init__(self, folder: Path | None, tree: str) -> None:
        self.folder, self.results = folder, {}
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        mark = folder / "tree.sha256"
        if mark.exists() and mark.read_text().strip() != tree:
            raise SystemExit(f"{folder} holds a run of another tree (the code or tests changed): pass a new --state")
        mark.write_text(tree + "\n")
        if (log := folder / "results.jsonl").exists():
            text = log.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                with open(log, "a", encoding="utf-8") as f:
                    f.write("\n")  # end the line a kill cut short, so the next result starts its own
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    name = entry.pop("key")
                    self.results[name] = Result(**entry)
                except (ValueError, TypeError, KeyError):
                    continue  # a line cut short by a kill: that mutant runs again

    def baseline(self) -> tuple[dict[str, float], dict[str, dict[int, set[str]]]] | None:
        path = None if self.folder is None else self.folder / "baseline.json"
        if path is None or not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["secs"], {f: {int(n): set(t) for n, t in lines.items()} for f, lines in data["lines"].items()}

    def save_baseline(self, secs: dict[str, float], lines: dict[str, dict[int, set[str]]]) -> None:
        if self.folder is not None:
            data = {"secs": secs, "lines": {f: {n: sorted(t) for n, t in ls.items()} for f, ls in lines.items()}}
            tmp = self.folder / "baseline.json.tmp"
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.folder / "baseline.json")

    def record(self, name: str, result: Result) -> None:
        self.results[name] = result
        if self.folder is not None:
            with open(self.folder / "results.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": name, **asdict(result)}) + "\n")
                f.flush()
