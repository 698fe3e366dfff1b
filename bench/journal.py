"""A mutation run's saved state (``bench/mutation.py --state DIR``), so a run of hours can stop at any moment and go on,
and go on after the code or the tests change (tests added for its survivors, a fix elsewhere).

The folder holds the tree's fingerprint (the library's and the tests' files, path and bytes), each test file's
baseline (its time, each test's time, and which of its tests run each library line, under the file's own fingerprint)
and one JSON line per finished mutant, appended and flushed as it ends. A mutant's key names its module's contents, so
a changed module's mutants are new ones. When anything else changed, kills are kept (a test added does not revive a
mutant) and the rest run again, on a baseline redone for the changed test files only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mutants import Mutant

Lines = dict[str, dict[int, set[str]]]  # library file -> line -> the node ids of the tests that ran it


@dataclass
class Result:
    out: str  # passed | failed | timeout | error N
    secs: float
    failed: list[str] = field(default_factory=list)  # node ids the log lists as failed


@dataclass
class FileBaseline:
    """One test file run alone on the unmutated code: its fingerprint, time, per-test times and line coverage."""

    sha: str
    secs: float
    durations: dict[str, float] = field(default_factory=dict)  # node id (parameters summed) -> seconds
    lines: Lines = field(default_factory=dict)


def fingerprint(tree: Path, parts: tuple[str, ...] = ("",)) -> str:
    """sha256 of every file's path and bytes under ``tree``'s ``parts`` (symlinks not followed)."""
    h = hashlib.sha256()
    for path in sorted(p for part in parts for p in (tree / part).rglob("*") if p.is_file() and not p.is_symlink()):
        h.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def suite_file_sha(tree: Path, test_file: str) -> str:
    """A test file's fingerprint: its bytes and those of its folder's helpers (conftest.py, appkit.py...)."""
    helpers = sorted(p for p in (tree / test_file).parent.glob("*.py") if not p.name.startswith("test_"))
    h = hashlib.sha256()
    for p in [tree / test_file, *helpers]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def key(m: Mutant, source: str, redo: bool = False) -> str:
    """A result's name: the mutant, in its module's unmutated ``source`` (so an edit elsewhere in it counts)."""
    sha = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"{'redo ' if redo else ''}{m.path}@{sha}:{m.start}:{m.end}:{m.new}"


class Journal:
    """The state folder, or nothing at all (``folder=None``: a run that keeps nothing)."""

    def __init__(self, folder: Path | None, tree: str) -> None:
        self.folder, self.results, self.kept = folder, {}, 0
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "results.jsonl"
        if log.exists():
            text = log.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                with open(log, "a", encoding="utf-8") as f:
                    f.write("\n")  # end the line a kill cut short, so the next result starts its own
            self._read(text)
        seen = folder / "tree.sha256"
        if seen.exists() and seen.read_text().strip() != tree and self.results:
            self.results = {k: r for k, r in self.results.items() if r.out == "failed" and not k.startswith("alone ")}
            self.kept = len(self.results)
            self._rewrite(log)
        seen.write_text(tree + "\n")

    def _read(self, text: str) -> None:
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                name = entry.pop("key")
                self.results[name] = Result(**entry)
            except (ValueError, TypeError, KeyError):
                continue  # a line cut short by a kill: that mutant runs again

    def _rewrite(self, log: Path) -> None:
        tmp = log.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"key": k, **asdict(r)}) + "\n" for k, r in self.results.items()), "utf-8")
        os.replace(tmp, log)

    def baseline(self) -> dict[str, FileBaseline]:
        """The saved baseline of each test file (an empty dict without one)."""
        path = None if self.folder is None else self.folder / "baseline.json"
        if path is None or not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8")).get("files", {})
        return {f: FileBaseline(b["sha"], b["secs"], b["durations"],
                                {lib: {int(n): set(t) for n, t in ls.items()} for lib, ls in b["lines"].items()})
                for f, b in data.items()}

    def save_baseline(self, files: dict[str, FileBaseline]) -> None:
        if self.folder is not None:
            data = {f: {**asdict(b), "lines": {lib: {n: sorted(t) for n, t in ls.items()} for lib, ls in b.lines.items()}}
                    for f, b in files.items()}
            tmp = self.folder / "baseline.json.tmp"
            tmp.write_text(json.dumps({"files": data}), encoding="utf-8")
            os.replace(tmp, self.folder / "baseline.json")

    def record(self, name: str, result: Result) -> None:
        self.results[name] = result
        if self.folder is not None:
            with open(self.folder / "results.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": name, **asdict(result)}) + "\n")
                f.flush()
