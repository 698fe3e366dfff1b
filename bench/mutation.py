"""Mutation testing as a benchmark (not CI): how many small bugs planted in the library do the tests catch?

Each module is parsed with ``ast`` and mutated one spot at a time (a precise text edit; line numbers are kept):
comparisons flipped (< <=, > >=, == !=, is / is not, in / not in), arithmetic swapped (+ -, * /, // -> /, % -> //,
** -> *, also in ``+=``...), and/or swapped, ``not`` removed, True/False flipped ("kwarg" for keyword arguments),
numbers changed (int n -> n+1, float x -> 10x, 0.0 -> 1.0), ``return x`` -> ``return None``. Left alone: docstrings,
f-strings, annotations, ``__all__``, imports, ``raise`` statements, message calls (print, logging, st.info...),
``if __name__``/``TYPE_CHECKING`` blocks, assert messages and lines marked ``# pragma: no mutate``.

The repository is never written: its working tree (``git ls-files -co --exclude-standard``) is copied to a temp dir,
one copy per job, and mutants are written there. A mutant's tests are those of the test files that reach its module
through any chain of imports (a test driving app/main.py through AppTest reaches what the script imports), narrowed to
the tests that execute the mutated line (``covermap.py``: the baseline runs under coverage with per-test contexts); a
line run only at import or in a fixture gets the tests that run any line of its module, and a line no test runs
in-process keeps the whole files (``testmap.py`` maps files to modules). ``pytest -x``, quickest test first (the
baseline times each), in a child forked from this process once it has imported torch, numpy, pytest and streamlit (``--no-fork``: a
fresh interpreter per run). Killed: a test fails or collection breaks, or the run times out (counted apart); pytest's
usage and no-test errors are reported, not counted as kills. A narrowed kill whose failing tests also fail alone on
the unmutated code is redone on the whole files. The unmutated tests run first, per file, timed and covered; if one
fails, nothing else runs. Default timeout per mutant: 3x the baseline time of its test files + 30 s. ``--state DIR``
(outside the repository) keeps the baseline and every result as it ends, so the same command resumes a stopped run;
after tests are added (for survivors), it keeps the kills, redoes the baseline of the changed test files only and
reruns only the survivors those files' tests cover (``journal.py``); a changed module's mutants are new ones.
``--summary`` only reads the folder, so it is safe beside a running run. Mutants that ``bench/equivalent.toml`` judges
equivalent (each with its reason) are not run (``--run-equivalent``: run them too) and count as survivors.

    OMP_NUM_THREADS=1 nice -n 15 python bench/mutation.py --modules allconv/preprocess.py --max-mutants 20
    OMP_NUM_THREADS=1 python bench/mutation.py --jobs 2 --state /tmp/mutation   # every module; rerun to resume
    python bench/mutation.py --list                                 # the mutants and test files; runs nothing
    python bench/mutation.py --modules allconv/train.py::resume,Run._restore   # only these functions/methods
    python bench/mutation.py --jobs 2 --timeout 600 --tests tests/test_models.py --kinds compare,number

It prints a table (module, mutants, killed, timeouts, survived, score), then each survivor and its source line for a
human to judge: an equivalent mutant (no test can tell it apart) or a missing test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from covermap import LineTests, failed_nodes, read_lines, run_pytest  # noqa: E402  (bench/ is not a package)
from equivalent import judge, load as load_equivalent  # noqa: E402
from journal import FileBaseline, Journal, Result, key, source_sha, suite_file_sha, suite_sha  # noqa: E402
from mutants import Mutant, mutants  # noqa: E402
from testmap import test_map  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("allconv/preprocess.py", "allconv/checkpoint.py", "allconv/models.py", "allconv/train.py",
           "allconv/config.py::lr_at", "allconv/data.py", "vis/modes.py", "vis/reconstruct.py", "vis/receptive.py",
           "vis/figure2.py", "app/sidebar.py", "app/config.py", "app/main.py", "app/allow.py",
           "vis/backward.py", "vis/cone.py", "vis/scan.py")  # issue 15's list first, then the rest of the vis core
LIBRARY = ("allconv", "vis", "app")
PRELOAD = ("numpy", "torch", "torchvision", "PIL.Image", "safetensors.torch", "matplotlib", "pytest", "streamlit",
           "streamlit.testing.v1")
Plan = list[tuple[str, list["Mutant"], list[str]]]  # (module spec, its mutants, its test files)


def snapshot(root: Path, dest: Path) -> None:
    """Copy the working tree (tracked and untracked-but-not-ignored files) to ``dest``; link ``../shared`` beside."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest / rel)
    if (root.parent / "shared").exists():
        (dest.parent / "shared").symlink_to(root.parent / "shared")


def _child(copy: Path, cmd: list[str], log: Path, cov: Path | None) -> None:
    """In the forked child: pytest on ``copy``'s packages (under coverage if ``cov``), output to ``log``; exit 98 if
    one came from elsewhere."""
    code = 99
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1), os.dup2(fd, 2)
        os.chdir(copy)
        sys.path.insert(0, str(copy))
        code = run_pytest(copy, cmd, cov, LIBRARY)
        stray = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in LIBRARY
                 and getattr(m, "__file__", None) and not m.__file__.startswith(f"{copy}/")]
        if stray:
            print(f"imported outside the copy: {stray}")
            code = 98
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(int(code))


class Pytest:
    """One pytest run on a copy, in a forked child or a fresh interpreter, in its own process group."""

    def __init__(self, copy: Path, tests: list[str], log: Path, fork: bool, cov: Path | None = None) -> None:
        cmd = ["-x", "-q", "-p", "no:cacheprovider", f"--basetemp={copy.with_suffix('.tmp')}", *tests]
        self.proc = None
        if fork:
            self.pid = os.fork()
            if self.pid == 0:
                _child(copy, cmd, log, cov)
            try:
                os.setpgid(self.pid, self.pid)
            except OSError:
                pass
            return
        launch = [sys.executable, str(copy / "bench" / "covermap.py"), str(copy), str(cov or "-"), ",".join(LIBRARY),
                  "--"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*launch, *cmd], cwd=copy, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def stop(self) -> None:
        """Kill the process group (leftover workers included) and reap the child."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait() if self.proc else os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


@dataclass
class Task:
    mutant: Mutant | None  # None: unmutated (the baseline, or a check that a killing test passes alone)
    tests: list[str]
    limit: float
    cov: Path | None = None  # record per-test coverage here


def outcome(code: int | None) -> str:
    """pytest's exit code as a result: 1 (a test failed) and 2 (collection broke) kill; 3-5 and 98 are errors
    (internal, usage, no test collected, the library imported from outside the copy), not kills."""
    return "timeout" if code is None else {0: "passed", 1: "failed", 2: "failed"}.get(code, f"error {code}")


def run(tasks: list[Task], copies: list[Path], fork: bool,
        on_done: Callable[[int, Result], None] | None = None) -> list[Result]:
    """Run the tasks, one per copy at a time, calling ``on_done(i, result)`` as each ends; task i's log is
    logs/i.log. Copies are restored."""
    originals = {t.mutant.path: (copies[0] / t.mutant.path).read_text(encoding="utf-8") for t in tasks if t.mutant}
    results, free, running, queue = [Result("", 0.0)] * len(tasks), list(copies), {}, list(enumerate(tasks))

    def write(copy: Path, m: Mutant | None, mutated: bool) -> None:
        if m:
            (copy / m.path).write_text(m.apply(originals[m.path]) if mutated else originals[m.path], "utf-8")

    try:
        while queue or running:
            while queue and free:
                copy, (i, task) = free.pop(), queue.pop(0)
                write(copy, task.mutant, True)
                log = copy.parent / "logs" / f"{i}.log"
                running[copy] = (Pytest(copy, task.tests, log, fork, task.cov), i, time.monotonic(), log)
            for copy, (proc, i, t0, log) in list(running.items()):
                code, secs = proc.poll(), time.monotonic() - t0
                if code is None and secs < tasks[i].limit:
                    continue
                proc.stop()
                write(copy, tasks[i].mutant, False)
                del running[copy]
                free.append(copy)
                results[i] = Result(outcome(code), secs, sorted(failed_nodes(log.read_text(errors="replace"))))
                if on_done:
                    on_done(i, results[i])
                label = tasks[i].mutant or " ".join(tasks[i].tests)
                done = sum(bool(r.out) for r in results)
                print(f"[{done}/{len(tasks)}] {label}: {results[i].out} ({secs:.1f}s)", file=sys.stderr, flush=True)
            time.sleep(0.05)
    finally:
        for copy, (proc, i, _, _) in running.items():
            proc.stop()
            write(copy, tasks[i].mutant, False)
    return results


def preload() -> None:
    """Import heavy third-party packages once, so forked children start warm; never the library itself."""
    sys.dont_write_bytecode = True  # a same-size mutant written within the same second must not meet a stale .pyc
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as e:  # noqa: BLE001 - a missing optional package only costs speed
            print(f"preload {name}: {e}", file=sys.stderr)
    assert not set(LIBRARY) & set(sys.modules), "the parent must not import the library"


def report(plan: Plan, outcome: dict[Mutant, str], root: Path, judged: dict[Mutant, str]) -> None:
    """The table, then each survivor (or error) with its source line (from the snapshot that was mutated), then the
    judged-equivalent ones with the reason. The score is over the mutants run or judged (``--summary`` of a stopped
    run: the rest are counted as not run); a judged mutant counts as a survivor, so judging one never raises it."""
    print(f"{'module':40} {'mutants':>7} {'killed':>7} {'timeouts':>9} {'survived':>9} {'of them judged':>14} "
          f"{'not run':>8} {'score':>7}")
    survivors = []
    for spec, found, _ in plan:
        outs = [outcome[m] for m in found]
        n, killed, timeouts, idle = len(outs), outs.count("failed"), outs.count("timeout"), outs.count("")
        survivors += [m for m in found if outcome[m] not in ("failed", "timeout", "")]
        score = f"{100 * (killed + timeouts) / (n - idle):.1f}%" if n > idle else "-"
        print(f"{spec:40} {n:7} {killed:7} {timeouts:9} {n - killed - timeouts - idle:9} "
              f"{outs.count('equivalent'):14} {idle:8} {score:>7}")
    for title, group in (("survivors", [m for m in survivors if m not in judged]),
                         ("judged equivalent (bench/equivalent.toml), not run", [m for m in survivors if m in judged])):
        print(f"\n{title} ({len(group)}):" if group else f"\n{title}: none")
        for m in group:
            note = f"  ({outcome[m]})" if outcome[m] not in ("passed", "equivalent") else ""
            why = f"\n      why: {judged[m]}" if m in judged else ""
            print(f"  {m}{note}\n      {(root / m.path).read_text(encoding='utf-8').splitlines()[m.line - 1].strip()}"
                  f"{why}")
    if killed_judged := [m for m, out in outcome.items() if m in judged and out in ("failed", "timeout")]:
        print("\njudged equivalent but killed (drop their entries): " + ", ".join(map(str, killed_judged)))


def baseline(shas: dict[str, str], copies: list[Path], args: argparse.Namespace,
             journal: Journal) -> tuple[dict[str, float], LineTests]:
    """Each test file of ``shas`` (file -> its ``suite_file_sha``) alone, timed, under coverage unless
    ``--no-coverage``: only the files the journal has no baseline of at their current contents. Raises SystemExit
    if one fails."""
    saved = {f: b for f, b in journal.baseline().items() if f in shas and b.sha == shas[f] and b.fresh(copies[0])}
    todo = [f for f in sorted(shas) if f not in saved]
    if todo and args.summary:
        raise SystemExit(f"--summary needs a --state folder holding this run's baseline (none of {', '.join(todo)})")
    logs = copies[0].parent / "logs"
    cov = {f: None if args.no_coverage else logs / f"{Path(f).stem}.cov" for f in todo}

    def done(i: int, r: Result) -> None:  # saved as each file ends: a run stopped in its baseline goes on from there
        if r.out == "passed":
            f, c = todo[i], cov[todo[i]]
            lines = read_lines(c, copies, f) if c else {}
            saved[f] = FileBaseline(shas[f], r.secs, json.loads(Path(f"{c}.secs.json").read_text()) if c else {},
                                    lines, {lib: source_sha(copies[0] / lib) for lib in lines})
            journal.save_baseline({**journal.baseline(), f: saved[f]})

    base = run([Task(None, [f], 3600, cov[f]) for f in todo], copies, not args.no_fork, done)
    for i in (i for i, r in enumerate(base) if r.out != "passed"):
        print(f"baseline {base[i].out}: {todo[i]}\n{(logs / f'{i}.log').read_text(errors='replace')[-3000:]}",
              file=sys.stderr)
    if any(r.out != "passed" for r in base):
        raise SystemExit("the unmutated tests must pass: stopping")
    if todo:
        print("baseline: " + ", ".join(f"{f} {saved[f].secs:.1f}s" for f in todo), file=sys.stderr)
    lines = LineTests()
    for b in saved.values():
        lines.add(b.lines, b.durations)
    return {f: b.secs for f, b in saved.items()}, lines


def lone_failures(tasks: list[Task], results: list[Result], copies: list[Path], secs: dict[str, float],
                  args: argparse.Namespace, journal: Journal, shas: dict[str, str]) -> list[int]:
    """The narrowed tasks whose kill may be the selection's doing: every test that failed for them also fails alone on
    the unmutated code (a test that leans on an earlier one). Each killing test is run alone once (journaled)."""
    killers = {i: set(r.failed) for i, r in enumerate(results) if r.out == "failed" and "::" in tasks[i].tests[0]}
    nodes = sorted(set().union(*killers.values()))
    todo = [n for n in nodes if journal.get(f"alone {n}", suite_sha(shas, [n])) is None]
    run([Task(None, [n], 3 * secs[n.split("::")[0]] + 30) for n in todo], copies, not args.no_fork,
        lambda j, r: journal.record(f"alone {todo[j]}", replace(r, suite=suite_sha(shas, [todo[j]]))))
    lone = {n for n in nodes if journal.results[f"alone {n}"].out != "passed"}
    if lone:
        print(f"tests that fail alone, unmutated: {', '.join(sorted(lone))}", file=sys.stderr)
    return [i for i, found in killers.items() if found and found <= lone]


def run_journaled(tasks: list[Task], copies: list[Path], args: argparse.Namespace, journal: Journal,
                  shas: dict[str, str], redo: bool = False) -> list[Result]:
    """``run`` for the tasks the journal has no result of (none with ``--summary``: those stay ``""``, not run);
    every result recorded as it ends."""
    source = {t.mutant.path: (copies[0] / t.mutant.path).read_text(encoding="utf-8") for t in tasks if t.mutant}
    keys = [key(t.mutant, source[t.mutant.path], redo) for t in tasks]
    suites = [suite_sha(shas, t.tests) for t in tasks]
    todo = [i for i, k in enumerate(keys) if journal.get(k, suites[i]) is None]
    if len(todo) < len(tasks):
        print(f"{len(tasks) - len(todo)} of {len(tasks)} results from {args.state}", file=sys.stderr)
    if not args.summary:
        run([tasks[i] for i in todo], copies, not args.no_fork,
            lambda j, r: journal.record(keys[todo[j]], replace(r, suite=suites[todo[j]])))
    return [journal.get(k, s) or Result("", 0.0) for k, s in zip(keys, suites)]


def judged_mutants(plan: Plan, root: Path) -> dict[Mutant, str]:
    """The plan's mutants that bench/equivalent.toml judges equivalent -> why; stale entries of its modules (matching
    none of the module's mutants, of every kind) are reported."""
    paths = sorted({m.path for _, found, _ in plan for m in found})
    every = [m for p in paths for m in mutants(root, p, None)]
    judged, stale = judge(every, {p: (root / p).read_text(encoding="utf-8") for p in paths}, load_equivalent())
    for e in stale:
        print(f"stale entry in bench/equivalent.toml, no mutant matches it: {e.path}: {e.mutant}", file=sys.stderr)
    found = {m for _, ms, _ in plan for m in ms}
    return {m: why for m, why in judged.items() if m in found}


def execute(plan: Plan, copies: list[Path], args: argparse.Namespace, journal: Journal) -> int:
    """Baseline (each test file alone, timed, covered), then every mutant on the tests that run its line (or its
    module's test files); kills that only a lone-failing test made are redone on the files. Print the report."""
    t_start = time.monotonic()
    if missing := [spec for spec, found, tests in plan if found and not tests]:
        print(f"no test imports {', '.join(missing)}: pass --tests", file=sys.stderr)
        return 2
    if not (args.no_fork or args.summary):
        preload()
    shas = {f: suite_file_sha(copies[0], f) for f in {t for _, found, tests in plan if found for t in tests}}
    secs, lines = baseline(shas, copies, args, journal)

    def limit(tests: list[str]) -> float:
        return args.timeout or 3 * sum(secs[f] for f in {t.split("::")[0] for t in tests}) + 30

    judged = judged_mutants(plan, copies[0])
    files = {m: sorted(tests, key=secs.get) for _, found, tests in plan for m in found}
    tasks = []
    for m, whole in files.items():
        if m in judged and not args.run_equivalent:
            continue
        narrow = lines.tests(m)
        tests = whole if narrow is None else sorted(narrow, key=lambda n: (lines.secs.get(n, secs[n.split("::")[0]]), n))
        tasks.append(Task(m, tests, limit(tests)))
    print(f"{sum('::' in t.tests[0] for t in tasks)} of {len(tasks)} mutants run only the tests that cover them",
          file=sys.stderr)
    results = run_journaled(tasks, copies, args, journal, shas)
    source = {m.path: (copies[0] / m.path).read_text(encoding="utf-8") for m in files}
    for i, t in enumerate(tasks):  # a kill already redone on the whole files (a stopped run's)
        redone = journal.get(key(t.mutant, source[t.mutant.path], redo=True), suite_sha(shas, files[t.mutant]))
        results[i] = redone or results[i]
    if not args.summary and (redo := lone_failures(tasks, results, copies, secs, args, journal, shas)):
        again = [Task(tasks[i].mutant, files[tasks[i].mutant], limit(files[tasks[i].mutant])) for i in redo]
        for i, r in zip(redo, run_journaled(again, copies, args, journal, shas, redo=True)):
            results[i] = r
    outcome = {**{m: "equivalent" for m in judged}, **{t.mutant: r.out for t, r in zip(tasks, results)}}
    report(plan, outcome, copies[0], judged)
    print(f"\n{len(tasks)} mutants, {time.monotonic() - t_start:.0f}s wall with the baseline, {len(copies)} job(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="+", default=list(MODULES), help="path[::name,Class.method] (default: the list)")
    ap.add_argument("--tests", nargs="+", help="test files for every mutant, instead of those importing its module")
    ap.add_argument("--max-mutants", type=int, help="a sample of at most N mutants per module (see --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", help="comma-separated subset of compare,arith,and/or,not,bool,kwarg,number,return")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, help="seconds per mutant (default: 3x its tests' baseline + 30)")
    ap.add_argument("--list", action="store_true", help="print the mutants and their test files; run nothing")
    ap.add_argument("--no-fork", action="store_true", help="a fresh interpreter per run instead of a fork")
    ap.add_argument("--no-coverage", action="store_true",
                    help="run each mutant on all its module's test files, not only the tests that cover its line")
    ap.add_argument("--run-equivalent", action="store_true",
                    help="also run the mutants bench/equivalent.toml judges equivalent (to check a judgement)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (copies, logs)")
    ap.add_argument("--state", type=Path, help="a folder outside the repository that keeps the baseline and each "
                    "result as it ends: the same command goes on where a stopped run left off")
    ap.add_argument("--summary", action="store_true", help="print the table of what --state holds; run nothing")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mutation-"))
    copies = [work / f"w{i}" for i in range(max(1, args.jobs))]
    try:
        snapshot(ROOT, copies[0])
        (work / "logs").mkdir()
        for c in copies[1:]:
            shutil.copytree(copies[0], c, symlinks=True)
        tmap, plan = test_map(copies[0]), []
        for spec in args.modules:
            found = mutants(copies[0], spec, set(args.kinds.split(",")) if args.kinds else None)
            if args.max_mutants is not None and len(found) > args.max_mutants:
                found = sorted(random.Random(args.seed).sample(found, args.max_mutants), key=lambda m: m.start)
            mod = spec.split("::")[0].removesuffix(".py").replace("/", ".").removesuffix(".__init__")
            plan.append((spec, found, args.tests or sorted(t for t, mods in tmap.items() if mod in mods)))
        if not args.list:
            return execute(plan, copies, args, Journal(args.state, readonly=args.summary))
        for spec, found, tests in plan:
            print(f"== {spec}: {len(found)} mutants; tests: {' '.join(tests) or 'NONE'}")
            print("\n".join(f"  {m}" for m in found))
        print("\n".join(f"{spec:40} {len(found):5}" for spec, found, _ in plan))
        print(f"{'total':40} {sum(len(found) for _, found, _ in plan):5}")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
