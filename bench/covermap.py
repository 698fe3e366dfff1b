"""Which tests run each line of the library, for bench/mutation.py: a mutant is tried on the tests that execute its
line, not on every test of every file that imports its module (the same idea as mutmut's per-test coverage).

Each baseline test file runs under coverage.py with ``dynamic_context = test_function``: a line executed while a test
function is on the stack is recorded under that test's name, in any thread the test starts (AppTest's script thread
included). Lines run only at import or in fixtures carry the empty context: a mutant there is tried on every test
that runs any line of its module. Lines no test runs in this process (a torchrun worker's, say) carry none: a mutant
there falls back to all the test files that reach its module.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

from mutants import Mutant

Nodes = dict[str, set[str]]  # line -> pytest node ids ("" where the line ran outside any test function)


class Durations:
    """A pytest plugin: each test's time (setup, call and teardown; a parametrized test's cases summed)."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = {}

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001 - pytest's TestReport
        node = report.nodeid.split("[")[0]
        self.secs[node] = self.secs.get(node, 0.0) + report.duration


def run_pytest(copy: Path, args: list[str], cov_file: Path | None, sources: tuple[str, ...]) -> int:
    """``pytest.main(args)``, under coverage with per-test contexts where ``cov_file`` is given (data saved there, each
    test's time beside it in ``<cov_file>.secs.json``)."""
    import pytest

    if cov_file is None:
        return pytest.main(args)
    import coverage

    cov = coverage.Coverage(data_file=str(cov_file), source=[str(copy / s) for s in sources], config_file=False)
    cov.set_option("run:dynamic_context", "test_function")
    timer = Durations()
    cov.start()
    try:
        return pytest.main(args, plugins=[timer])
    finally:
        cov.stop()
        cov.save()
        Path(f"{cov_file}.secs.json").write_text(json.dumps(timer.secs), encoding="utf-8")


def collected_names(test_file: Path) -> set[str]:
    """The test functions pytest collects from a file: ``test_x`` and ``TestCls.test_x`` (as coverage names them)."""
    names = set()
    for node in ast.parse(test_file.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f"{node.name}.{f.name}" for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test")}
    return names


def read_lines(cov_file: Path, copies: list[Path], test_file: str) -> dict[str, Nodes]:
    """One test file's coverage data (measured on one of ``copies``, identical trees): library file -> line -> the
    node ids of its tests that ran the line."""
    from coverage import CoverageData

    data = CoverageData(basename=str(cov_file))
    data.read()
    names, stem, out = collected_names(copies[0] / test_file), Path(test_file).stem, {}
    for measured in data.measured_files():
        path = Path(measured)
        copy = next((c for c in copies if path.is_relative_to(c)), None)
        if copy is not None:
            slots = out.setdefault(path.relative_to(copy).as_posix(), {})
            for line, contexts in data.contexts_by_lineno(measured).items():
                slots.setdefault(line, set()).update(_node(c, test_file, stem, names) for c in contexts)
    return out


class LineTests:
    """library file (relative path) -> line -> the node ids of the tests that ran it, over every test file's
    baseline, and each test's time (to try the quick ones first)."""

    def __init__(self) -> None:
        self.lines: dict[str, Nodes] = {}
        self.secs: dict[str, float] = {}

    def add(self, lines: dict[str, Nodes], secs: dict[str, float] | None = None) -> None:
        """Merge one test file's line map and test times."""
        for lib, slots in lines.items():
            mine = self.lines.setdefault(lib, {})
            for line, nodes in slots.items():
                mine.setdefault(line, set()).update(nodes)
        self.secs.update(secs or {})

    def tests(self, m: Mutant) -> list[str] | None:
        """The node ids of the tests that run ``m``'s lines. A line run outside any test (at import: a constant, a
        default, a decorator) acts through the module's code, so it gets every test that runs any line of the module.
        None where no test runs the line in this process: the caller then uses the module's test files."""
        slots = self.lines.get(m.path, {})
        found = set().union(*(slots.get(n, set()) for n in range(m.line, m.line + m.old.count("\n") + 1)))
        if "" in found:
            found = set().union(*slots.values())
        return sorted(found - {""}) or None


def _node(context: str, test_file: str, stem: str, names: set[str]) -> str:
    """A coverage context (``test_x.TestCls.test_y``) as a pytest node id, or "" if it names no collected test."""
    qual = re.sub(rf"^(.*\.)?{re.escape(stem)}\.", "", context) if context else ""
    return f"{test_file}::{qual.replace('.', '::')}" if qual in names else ""


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+?)(?: - .*)?$", re.M)


def failed_nodes(log: str) -> set[str]:
    """The node ids a ``pytest -q`` log lists as failed or in error (its short summary), parameters dropped."""
    return {n.split("[")[0] for n in FAILED.findall(log) if "::" in n}


if __name__ == "__main__":  # pragma: no cover - the no-fork child: COPY COVFILE|- SOURCES -- PYTEST ARGS
    copy, cov, sources = Path(sys.argv[1]), sys.argv[2], tuple(sys.argv[3].split(","))
    sys.path.insert(0, str(copy))
    sys.exit(run_pytest(copy, sys.argv[5:], None if cov == "-" else Path(cov), sources))
