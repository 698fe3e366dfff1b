"""The mutants judged equivalent (``bench/equivalent.toml``), for bench/mutation.py: which mutants they are, and why.

An entry names a module, one of its source lines and that line as the mutant has it (both stripped), so it keeps
matching when other lines move and stops matching (stale) when its own line changes. mutation.py does not run the
mutants matched (their run costs all the tests that cover them, minutes each) and counts them as survivors.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from mutants import Mutant

FILE = Path(__file__).with_name("equivalent.toml")


@dataclass(frozen=True)
class Entry:
    path: str
    line: str
    mutant: str
    why: str


def load(file: Path = FILE) -> list[Entry]:
    """The entries of ``file``; a missing field is a one-line error naming the entry."""
    entries = tomllib.loads(file.read_text(encoding="utf-8")).get("equivalent", [])
    try:
        return [Entry(e["path"], e["line"], e["mutant"], e["why"]) for e in entries]
    except KeyError as e:
        raise SystemExit(f"{file}: an entry has no {e.args[0]!r} (each needs path, line, mutant, why)") from None


def judge(found: list[Mutant], sources: dict[str, str], entries: list[Entry]) -> tuple[dict[Mutant, str], list[Entry]]:
    """Each mutant of ``found`` that an entry matches -> the entry's reason; and the entries of the modules in
    ``sources`` (path -> unmutated text) that match none of ``found`` (stale)."""
    by_key = {(e.path, e.line, e.mutant): e for e in entries}
    judged, used = {}, set()
    for m in found:
        src = sources[m.path]
        k = (m.path, src.splitlines()[m.line - 1].strip(), m.apply(src).splitlines()[m.line - 1].strip())
        if k in by_key:
            judged[m], _ = by_key[k].why, used.add(k)
    stale = [e for k, e in by_key.items() if e.path in sources and k not in used]
    return judged, stale
