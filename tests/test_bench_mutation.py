"""bench/mutation.py's bookkeeping: which tests a mutant runs (from per-test coverage) and the resumable journal."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from covermap import Durations, LineTests, _node, failed_nodes, collected_names  # noqa: E402
from journal import FileBaseline, Journal, Result, key, source_sha, suite_file_sha, suite_sha  # noqa: E402
from mutants import Mutant  # noqa: E402
from testmap import test_map as modules_reached  # noqa: E402

TEST_FILE = '''
def test_a(): pass
def helper(): pass
class TestB:
    def test_c(self): pass
    def other(self): pass
'''


def test_contexts_become_node_ids_only_for_collected_tests(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(TEST_FILE)
    names = collected_names(tmp_path / "tests" / "test_x.py")
    assert names == {"test_a", "TestB.test_c"}
    assert _node("test_x.test_a", "tests/test_x.py", "test_x", names) == "tests/test_x.py::test_a"
    assert _node("tests.test_x.TestB.test_c", "tests/test_x.py", "test_x", names) == "tests/test_x.py::TestB::test_c"
    assert _node("test_x.test_nested_helper", "tests/test_x.py", "test_x", names) == ""  # not collected: no narrowing
    assert _node("", "tests/test_x.py", "test_x", names) == ""


def test_a_mutant_runs_the_tests_that_run_its_lines() -> None:
    lines = LineTests()
    lines.lines["m.py"] = {3: {"t.py::a"}, 4: {"t.py::b"}, 5: {"", "t.py::a"}}
    one = Mutant("m.py", 3, 0, 1, "x", "y", "compare")
    two_lines = Mutant("m.py", 3, 0, 5, "x\n+ y", "z", "return")
    assert lines.tests(one) == ["t.py::a"]
    assert lines.tests(two_lines) == ["t.py::a", "t.py::b"]
    assert lines.tests(Mutant("m.py", 5, 0, 1, "x", "y", "number")) == ["t.py::a", "t.py::b"]  # runs at import
    assert lines.tests(Mutant("m.py", 9, 0, 1, "x", "y", "number")) is None  # no test runs it in-process
    assert lines.tests(Mutant("n.py", 3, 0, 1, "x", "y", "number")) is None


def test_failed_nodes_read_from_a_quiet_log() -> None:
    log = ("F.\n=== short test summary info ===\nFAILED tests/test_x.py::test_a[3-bf16] - AssertionError: x - y\n"
           "ERROR tests/test_x.py::TestB::test_c\nERROR tests/test_y.py\n1 failed in 2.0s\n")
    assert failed_nodes(log) == {"tests/test_x.py::test_a", "tests/test_x.py::TestB::test_c"}


def test_journal_resumes_keeps_kills_and_survivors_of_unchanged_tests(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "tests").mkdir()
    (tree / "lib" / "a.py").write_text("x = 1\n")
    (tree / "lib" / "b.py").write_text("y = 1\n")
    (tree / "tests" / "test_a.py").write_text("def test_a(): pass\n")
    (tree / "tests" / "test_b.py").write_text("def test_b(): pass\n")

    def suite(*tests: str) -> str:
        return suite_sha({f: suite_file_sha(tree, f) for f in ("tests/test_a.py", "tests/test_b.py")}, list(tests))

    killed, survived = (Mutant("lib/a.py", 1, 4, 5, "1", n, "number") for n in ("2", "0"))
    other = Mutant("lib/b.py", 1, 4, 5, "1", "2", "number")
    j = Journal(tmp_path / "state")
    base = FileBaseline(suite_file_sha(tree, "tests/test_a.py"), 1.5, {"tests/test_a.py::test_a": 0.2},
                        {"lib/a.py": {1: {"tests/test_a.py::test_a"}}})
    j.save_baseline({"tests/test_a.py": base})
    a, b = "x = 1\n", "y = 1\n"
    s_a, s_b = suite("tests/test_a.py::test_a"), suite("tests/test_b.py")
    j.record(key(killed, a), Result("failed", 2.0, ["tests/test_a.py::test_a"], s_a))
    j.record(key(survived, a), Result("passed", 3.0, [], s_a))
    j.record(key(other, b), Result("passed", 1.0, [], s_b))
    with open(tmp_path / "state" / "results.jsonl", "a") as f:
        f.write('{"key": "lib/a.py:0:1:cut sh')  # a kill mid-write leaves half a line
    again = Journal(tmp_path / "state")
    assert len(again.results) == 3 and again.get(key(survived, a), s_a) == Result("passed", 3.0, [], s_a)
    assert again.baseline() == {"tests/test_a.py": base}
    again.record(key(killed, a, redo=True), Result("passed", 9.0, [], s_a))
    assert Journal(tmp_path / "state").get(key(killed, a, redo=True), s_a) == Result("passed", 9.0, [], s_a)

    before = (tmp_path / "state" / "results.jsonl").read_bytes()
    (tree / "tests" / "test_a.py").write_text("def test_a(): assert False\n")  # a test added for the survivor
    read = Journal(tmp_path / "state", readonly=True)
    new_a = suite("tests/test_a.py::test_a")
    assert new_a != s_a and suite_file_sha(tree, "tests/test_a.py") != base.sha  # so its baseline is redone
    assert read.get(key(killed, a), new_a) is not None  # a kill stays a kill
    assert read.get(key(survived, a), new_a) is None  # a survivor of a changed test file runs again
    assert read.get(key(other, b), suite("tests/test_b.py")) is not None  # one of unchanged test files does not
    assert read.get(key(killed, "x = 1  # edited\n"), new_a) is None  # an edited module's mutants are new
    read.record("x", Result("failed", 1.0))
    read.save_baseline({})
    assert (tmp_path / "state" / "results.jsonl").read_bytes() == before  # reading never writes
    assert Journal(tmp_path / "state").baseline() == {"tests/test_a.py": base}
    before = suite_file_sha(tree, "tests/test_a.py")
    (tree / "tests" / "conftest.py").write_text("import pytest\n")  # a helper the test file runs with
    assert suite_file_sha(tree, "tests/test_a.py") != before
    assert suite("tests/test_a.py") == suite("tests/test_a.py::test_a", "tests/test_a.py::test_b")  # files count


def test_a_test_reaches_what_its_helper_module_reaches(tmp_path: Path) -> None:
    for rel, text in {"app/__init__.py": "", "app/main.py": "from app import sidebar\n", "app/sidebar.py": "",
                      "allconv/__init__.py": "", "allconv/data.py": "",
                      "tests/kit.py": "from allconv import data\nAppTest.from_file('app/main.py')\n",
                      "tests/test_ui.py": "from kit import run\n", "tests/test_plain.py": "import os\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    reached = modules_reached(tmp_path)
    assert reached["tests/test_ui.py"] == {"allconv", "allconv.data", "app", "app.main", "app.sidebar"}
    assert reached["tests/test_plain.py"] == set()


def test_baseline_times_each_test_with_its_cases_summed(tmp_path: Path) -> None:
    (tmp_path / "test_t.py").write_text("import pytest, time\n"
                                        "@pytest.mark.parametrize('s', [0.05, 0.05])\n"
                                        "def test_slow(s): time.sleep(s)\n"
                                        "def test_quick(): pass\n")
    timer = Durations()
    assert pytest.main([str(tmp_path / "test_t.py"), "-q", "-p", "no:cacheprovider"], plugins=[timer]) == 0
    slow, quick = (next(v for k, v in timer.secs.items() if k.endswith(f"::test_{n}")) for n in ("slow", "quick"))
    assert len(timer.secs) == 2 and slow >= 0.1 and quick >= 0  # both cases of test_slow (2 x 50 ms), one node id
    lines = LineTests()
    lines.add({"m.py": {3: {"t.py::a"}}}, {"t.py::a": 0.5})
    lines.add({"m.py": {3: {"t.py::b"}, 4: {"t.py::b"}}}, {"t.py::b": 0.1})
    assert lines.lines == {"m.py": {3: {"t.py::a", "t.py::b"}, 4: {"t.py::b"}}} and lines.secs["t.py::b"] == 0.1


def test_equivalent_entries_match_their_mutant_wherever_its_line_moves_and_go_stale_when_it_changes(
        tmp_path: Path) -> None:
    """An entry names a line and the mutant's version of it: it matches that one mutant (not its neighbours on the
    line) after lines above it move, and is stale once its own line changes; a file missing a field is one line."""
    from equivalent import Entry, judge, load

    src = "x = 1\ny = x // 2 + x // 3\n"
    found = [Mutant("m.py", 2, 12, 14, "//", "/", "arith"), Mutant("m.py", 2, 21, 23, "//", "/", "arith")]
    entry = Entry("m.py", "y = x // 2 + x // 3", "y = x // 2 + x / 3", "exact")
    judged, stale = judge(found, {"m.py": src}, [entry, Entry("other.py", "a", "b", "not in this run")])
    assert judged == {found[1]: "exact"} and stale == []
    moved = [Mutant(m.path, 3, m.start + 6, m.end + 6, m.old, m.new, m.kind) for m in found]
    assert judge(moved, {"m.py": "# new\n" + src}, [entry])[0] == {moved[1]: "exact"}
    assert judge(found, {"m.py": src.replace("3", "4")}, [entry]) == ({}, [entry])
    toml = tmp_path / "eq.toml"
    toml.write_text('[[equivalent]]\npath = "m.py"\nline = "a"\nmutant = "b"\n')
    with pytest.raises(SystemExit, match=r"eq.toml: an entry has no 'why' \(each needs path, line, mutant, why\)$"):
        load(toml)


def test_a_baseline_that_stops_partway_keeps_the_files_that_passed(tmp_path: Path) -> None:
    """Each test file's baseline is saved as it ends, so a run stopped (or failing) in its baseline does not redo the
    files already timed."""
    import argparse

    from mutation import baseline

    tree = tmp_path / "w0"
    (tree / "tests").mkdir(parents=True)
    (tree / "tests" / "test_a.py").write_text("def test_a(): pass\n")
    (tree / "tests" / "test_b.py").write_text("def test_b(): assert False\n")
    (tmp_path / "logs").mkdir()
    shas = {f: suite_file_sha(tree, f) for f in ("tests/test_a.py", "tests/test_b.py")}
    bench = Path(__file__).resolve().parents[1] / "bench"
    shutil.copytree(bench, tree / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    args = argparse.Namespace(summary=False, no_coverage=True, no_fork=True)  # a fresh interpreter per file: this
    # process may have imported allconv already (other test files), which a forked child would inherit from outside
    journal = Journal(tmp_path / "state")
    with pytest.raises(SystemExit, match="the unmutated tests must pass"):
        baseline(shas, [tree], args, journal)
    kept = Journal(tmp_path / "state").baseline()
    assert list(kept) == ["tests/test_a.py"] and kept["tests/test_a.py"].sha == shas["tests/test_a.py"]


def test_a_baseline_is_redone_once_a_library_file_it_ran_changes(tmp_path: Path) -> None:
    """Its line map would point at moved lines: a mutant would run the tests of whatever line was there before."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text("x = 1\n")
    b = FileBaseline("sha", 1.0, {}, {"lib/a.py": {1: {"tests/test_a.py::test_a"}}},
                     {"lib/a.py": source_sha(tmp_path / "lib" / "a.py")})
    j = Journal(tmp_path / "state")
    j.save_baseline({"tests/test_a.py": b})
    assert Journal(tmp_path / "state").baseline() == {"tests/test_a.py": b} and b.fresh(tmp_path)
    (tmp_path / "lib" / "a.py").write_text("\nx = 1\n")  # its lines moved down one
    assert not b.fresh(tmp_path)
    assert not FileBaseline("sha", 1.0).fresh(tmp_path)  # saved before sources were kept: redone too
