"""A mutation run's saved state (``bench/mutation.py --state DIR``), so a run of hours can stop at any moment and go on,
and go on after the code or the tests change (tests added for its survivors, a fix elsewhere).

The folder holds each test file's baseline (its time, each test's time, and which of its tests run each library line,
under the file's own fingerprint and those of the library files it ran: an edited module redoes the baselines that ran it) and one JSON line per finished mutant, appended and flushed as it ends. A mutant's
key names its module's contents, so a changed module's mutants are new ones. A kill stays a kill (a test added does not
revive a mutant); any other result (a survivor, a timeout, a test run alone) holds while the test files it ran, and
their helpers, are unchanged (``suite``): adding a test to one file reruns only the survivors that file's tests cover.
Reading the folder never changes it (``--summary`` of a run in progress is safe).
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
    suite: str = ""  # the fingerprint of the test files it ran (``suite_sha``): what a result other than a kill holds for


@dataclass
class FileBaseline:
    """One test file run alone on the unmutated code: its fingerprint, time, per-test times and line coverage."""

    sha: str
    secs: float
    durations: dict[str, float] = field(default_factory=dict)  # node id (parameters summed) -> seconds
    lines: Lines = field(default_factory=dict)
    sources: dict[str, str] | None = None  # library file -> ``source_sha`` when measured (None: unknown, so stale)

    def fresh(self, tree: Path) -> bool:
        """Whether the line map still holds: every library file it ran is as it was. An edited module's lines moved,
        so its map would send a mutant to the tests of whatever line was there before."""
        return self.sources is not None and all(source_sha(tree / lib) == sha for lib, sha in self.sources.items())


def source_sha(path: Path) -> str:
    """A library file's fingerprint ("" once it is gone)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def suite_file_sha(tree: Path, test_file: str) -> str:
    """A test file's fingerprint: its bytes and those of its folder's helpers (conftest.py, appkit.py...)."""
    helpers = sorted(p for p in (tree / test_file).parent.glob("*.py") if not p.name.startswith("test_"))
    h = hashlib.sha256()
    for p in [tree / test_file, *helpers]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def suite_sha(file_shas: dict[str, str], tests: list[str]) -> str:
    """The fingerprint of the test files behind ``tests`` (files or node ids), from each file's ``suite_file_sha``."""
    files = sorted({t.split("::")[0] for t in tests})
    return hashlib.sha256("\0".join(f"{f}={file_shas[f]}" for f in files).encode()).hexdigest()[:16]


def key(m: Mutant, source: str, redo: bool = False) -> str:
    """A result's name: the mutant, in its module's unmutated ``source`` (so an edit elsewhere in it counts)."""
    sha = hashlib.sha256(source.encode()).hexdigest()[:12]
    return f"{'redo ' if redo else ''}{m.path}@{sha}:{m.start}:{m.end}:{m.new}"


class Journal:
    """The state folder, or nothing at all (``folder=None``: a run that keeps nothing); ``readonly``: read it only."""

    def __init__(self, folder: Path | None, readonly: bool = False) -> None:
        self.folder, self.results, self.readonly = folder, {}, readonly
        if folder is None:
            return
        log = folder / "results.jsonl"
        if not readonly:
            folder.mkdir(parents=True, exist_ok=True)
        if log.exists():
            text = log.read_text(encoding="utf-8")
            if text and not text.endswith("\n") and not readonly:
                with open(log, "a", encoding="utf-8") as f:
                    f.write("\n")  # end the line a kill cut short, so the next result starts its own
            self._read(text)

    def get(self, name: str, suite: str) -> Result | None:
        """The saved result of ``name`` if it still holds: a kill, or a result of these same test files."""
        r = self.results.get(name)
        return r if r is not None and (r.out == "failed" or r.suite == suite) else None

    def _read(self, text: str) -> None:
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                name = entry.pop("key")
                self.results[name] = Result(**entry)
            except (ValueError, TypeError, KeyError):
                continue  # a line cut short by a kill: that mutant runs again

    def baseline(self) -> dict[str, FileBaseline]:
        """The saved baseline of each test file (an empty dict without one)."""
        path = None if self.folder is None else self.folder / "baseline.json"
        if path is None or not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8")).get("files", {})
        return {f: FileBaseline(b["sha"], b["secs"], b["durations"],
                                {lib: {int(n): set(t) for n, t in ls.items()} for lib, ls in b["lines"].items()},
                                b.get("sources"))
                for f, b in data.items()}

    def save_baseline(self, files: dict[str, FileBaseline]) -> None:
        if self.folder is not None and not self.readonly:
            data = {f: {**asdict(b), "lines": {lib: {n: sorted(t) for n, t in ls.items()} for lib, ls in b.lines.items()}}
                    for f, b in files.items()}
            tmp = self.folder / "baseline.json.tmp"
            tmp.write_text(json.dumps({"files": data}), encoding="utf-8")
            os.replace(tmp, self.folder / "baseline.json")

    def record(self, name: str, result: Result) -> None:
        self.results[name] = result
        if self.folder is not None and not self.readonly:
            with open(self.folder / "results.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": name, **asdict(result)}) + "\n")
                f.flush()
