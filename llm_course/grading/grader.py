"""Grade the exercises: run their tests against an implementation, print a table.

``llm-course grade 0`` in a shell, or ``grade(0)`` in a notebook
(``grade(0, topics=["bpe"])`` for one notebook's exercises). The tests of
stage N live in ``tests/exercises/test_stageN_<k>_<topic>.py`` (k: the order in
which the course meets them, which is the order of the table); each test is
marked with the exercise it checks::

    @pytest.mark.exercise("bpe_merge", stage=0, points=2, title="BPE: merge a pair")

An exercise scores its points when all of its tests pass. A failure is shown
as plain sentences under its row: the first paragraph of the test's assertion
message (tests write those for the learner), "not done yet" for a stub that
still raises ``NotImplementedError``, or, for an error raised in the learner's
code, its type, the learner's file and line, and its whole message.

How the tests run (see :mod:`llm_course.grading.runner`):

1. A first process only *collects* the graded tests (it imports no learner
   code): the grader accepts results for these tests and no others, and a
   test that reports nothing counts as failed.
2. A second process runs them and reports each test over a private pipe.
   When it dies in the middle (a kernel's stray store crashes the
   interpreter, a learner's file calls ``os._exit``, a test runs past the time
   limit), the grader knows which test was running: that exercise's row says
   what happened, and the tests not yet run are run again in a new process
   without it, so one broken exercise never hides the others.
"""

from __future__ import annotations

import json
import linecache
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from llm_course.grading.adapter import ENV_IMPL, NAMED_IMPLS, repo_root, resolve_impl
from llm_course.grading.runner import (
    ENV_PARENT,
    ENV_TIMEOUT,
    STARTUP_TIMEOUT,
    ChildRun,
    default_timeout,
    group_killed_on_exit,
    run_pytest,
)

STAGE_NAMES = {
    0: "text to tokens, and how to measure",
    1: "Triton kernels",
    2: "attention and RoPE",
    3: "GPT-2 and Qwen2",
    4: "data and pretraining",
    5: "SFT, DPO, multi-GPU",
}
FINISHED = ("passed", "failed", "error", "skipped")  # outcomes of a test that ran to its end
_TEST_FILE = re.compile(r"test_stage(\d+)_(\d+)_(\w+)\.py")


class GradingError(ValueError):
    """The grading cannot start: unknown stage or topic, missing implementation folder, bad timeout."""


@dataclass
class ExerciseResult:
    name: str
    stage: int
    title: str
    points: int
    passed: bool
    reason: str  # plain sentences when failed, "" when passed
    tests: list[dict] = field(default_factory=list)
    status: str = ""  # "passed", "failed", "crashed" (the process died or exited), "timed out" or "not run"

    @property
    def score(self) -> int:
        return self.points if self.passed else 0


@dataclass
class GradeReport:
    impl: str
    exercises: list[ExerciseResult]
    problem: str = ""  # set when the grading could not start or the tests could not run at all
    notes: list[str] = field(default_factory=list)  # what went wrong outside any one exercise
    seconds: float = 0.0

    @property
    def score(self) -> int:
        return sum(e.score for e in self.exercises)

    @property
    def total(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def complete(self) -> bool:
        """Every graded test ran to its end and reported a result (no crash, time limit or early exit)."""
        tests = [t for e in self.exercises for t in e.tests]
        return not self.problem and not self.notes and bool(tests) and all(t["outcome"] in FINISHED for t in tests)

    @property
    def all_passed(self) -> bool:
        return self.complete and all(e.passed for e in self.exercises)

    def by_stage(self) -> dict[int, list[ExerciseResult]]:
        out: dict[int, list[ExerciseResult]] = {}
        for e in self.exercises:
            out.setdefault(e.stage, []).append(e)
        return dict(sorted(out.items()))


# --- which test files -------------------------------------------------------------------------


def _graded_files() -> list[tuple[int, str, Path]]:
    """(stage, topic, path) of every tests/exercises/test_stageN_<k>_<topic>.py, in course order."""
    out = []
    for path in sorted((repo_root() / "tests" / "exercises").glob("test_stage*_*.py")):
        m = _TEST_FILE.fullmatch(path.name)
        if m:
            out.append((int(m.group(1)), m.group(3), path))
    return sorted(out, key=lambda f: (f[0], f[2].name))


def graded_stages() -> list[int]:
    """The stages that have graded exercises."""
    return sorted({stage for stage, _, _ in _graded_files()})


def stage_test_files(stage: int | None = None, topics: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """The graded test files of one stage (or of all stages), restricted to ``topics`` when given.

    Raises :class:`GradingError`, naming what exists, for a stage without graded
    tests or an unknown topic.
    """
    files = [f for f in _graded_files() if stage is None or f[0] == stage]
    if not files:
        stages = ", ".join(map(str, graded_stages())) or "none"
        raise GradingError(f"stage {stage} has no graded exercises; the stages with graded exercises are: {stages}")
    if isinstance(topics, str):
        topics = [topics]
    if topics:
        known = [topic for _, topic, _ in files]
        unknown = [t for t in topics if t not in known]
        if unknown:
            where = f"stage {stage}" if stage is not None else "the course"
            raise GradingError(
                f"{where} has no exercise topic {', '.join(map(repr, unknown))}; its topics are: {', '.join(known)}"
            )
        files = [f for f in files if f[1] in topics]
    return [path for _, _, path in files]


# --- the two child processes ------------------------------------------------------------------


def _pytest_args(impl_arg: str, extra_args: tuple[str, ...]) -> list[str]:
    return ["-q", "-p", "no:cacheprovider", "-p", "llm_course.grading.plugin", f"--impl={impl_arg}",
            "-o", "addopts=", *extra_args]  # fmt: skip


def _start_collection(files: list[Path], args: list[str], tmp: Path) -> subprocess.Popen:
    """Start ``pytest --collect-only`` (imports no learner code); it writes the graded tests to tmp/collected.json."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", *map(str, files), *args,
           f"--llm-course-collect={tmp / 'collected.json'}"]  # fmt: skip
    out = open(tmp / "collect.log", "wb")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **{ENV_PARENT: str(os.getpid())})
    try:
        return subprocess.Popen(cmd, cwd=repo_root(), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    finally:
        out.close()


def _finish_collection(proc: subprocess.Popen, tmp: Path) -> list[dict]:
    """The collected graded tests, or GradingError saying why collecting failed."""
    try:
        proc.wait(timeout=STARTUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise GradingError(f"collecting the graded tests took more than {STARTUP_TIMEOUT:g} s") from None
    path = tmp / "collected.json"
    if proc.returncode != 0 or not path.exists():
        log = (tmp / "collect.log").read_text(errors="replace")
        raise GradingError(f"the graded tests could not be collected (pytest exit {proc.returncode}):\n{_tail(log)}")
    data = json.loads(path.read_text())
    if data["learner_modules"]:
        raise GradingError(
            f"collecting the graded tests imported the implementation's code ({', '.join(data['learner_modules'])}): "
            "a test file must load it inside its tests, through the impl fixture"
        )
    graded = [t for t in data["tests"] if t["exercise"] is not None]
    if not graded:
        raise GradingError("no graded tests were collected")
    return graded


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --- what went wrong, in sentences ------------------------------------------------------------

_FRAME = re.compile(r'^\s*File "(.+)", line (\d+) in (\S+)', re.MULTILINE)
_WHY_SIGNAL = {
    "SIGSEGV": "a kernel probably wrote out of bounds; is every store masked?",
    "SIGBUS": "a kernel probably wrote out of bounds; is every store masked?",
    "SIGABRT": "memory was probably corrupted, often by a kernel's store out of bounds; is every store masked?",
    "SIGKILL": "it was killed from outside, often for running out of memory",
    "SIGFPE": "an integer division by zero or overflow in native code",
}


def _stack_location(output: str, root: Path) -> str:
    """The learner's innermost frame in a Python stack dump of the child (faulthandler), as ' at file:line (`code`)'."""
    for m in _FRAME.finditer(output):
        path = Path(m.group(1))
        try:
            rel = path.resolve().relative_to(root)
        except (OSError, ValueError):
            continue
        code = linecache.getline(str(path), int(m.group(2))).strip()
        return f" at {rel}:{m.group(2)}" + (f" (`{code}`)" if code else "")
    return ""


def _crash_excerpt(output: str, lines: int = 12) -> str:
    """The child's last words: the Python stack dump (without the lines in installed packages) or its output's tail."""
    dump = re.search(r"Fatal Python error|Current thread 0x|Thread 0x", output)  # pytest's dots may precede it
    text = output[dump.start() :] if dump else _tail(output, lines)
    noise = ("site-packages", "/lib/python3", "<frozen ")
    kept = [ln for ln in text.splitlines() if ln.strip() and not any(n in ln for n in noise)]
    return "\n".join(kept[:lines])


def _stopped_sentence(run: ChildRun, nodeid: str, exercise: str, root: Path, timeout: float) -> tuple[str, str]:
    """(outcome, sentence) for the test that was running when the child process died or was stopped."""
    test = nodeid.split("::")[-1]
    at = _stack_location(run.output, root)
    if run.timed_out:
        return "timeout", (
            f"the tests of exercise {exercise} did not finish {test} within {timeout:g} s{at}: is there a loop "
            f"that never ends? (on a slow machine, raise the limit with --timeout or ${ENV_TIMEOUT})"
        )
    rc = run.returncode
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = _WHY_SIGNAL.get(name, "the process was killed by a signal")
        return "crashed", f"the tests of exercise {exercise} crashed the Python process (signal {name}) while running {test}{at}: {why}"
    return "crashed", (
        f"the tests of exercise {exercise} stopped the Python process (exit code {rc}) while running {test}{at}: "
        "does the code call os._exit(), exit() or pytest.exit()? An exercise must return its result"
    )


def _first_paragraph(message: str) -> str:
    """The sentence of a test's assertion message: its first paragraph, without pytest's 'assert ...' details."""
    lines = []
    for line in message.strip().splitlines():
        if not line.strip() or line.startswith("assert ") or line.lstrip().startswith("+  where"):
            break
        lines.append(line.strip())
    return " ".join(lines)


def _explain(test: dict) -> str:
    """The sentence a learner reads for one failing test."""
    exc, msg, outcome = test.get("exc_type"), test.get("message") or "", test["outcome"]
    if outcome not in FINISHED:
        return msg
    if outcome == "skipped":
        return "skipped: " + (msg or "not runnable here")
    if exc == "NotImplementedError":
        return "not done yet" + (f" ({msg.splitlines()[0]})" if msg else "")
    if exc == "AssertionError" and msg and not test.get("raised_in_impl"):
        return _first_paragraph(msg) or msg
    if test.get("where"):
        code = f" (`{test['code']}`)" if test.get("code") else ""
        return f"your code raised {exc} at {test['where']}{code}" + (f": {msg}" if msg else "")
    return f"crashed with {exc}: {msg}" if exc else "failed"


# --- running and collecting results -----------------------------------------------------------


def run_tests(
    stage: int | None = None,
    impl: str | None = None,
    extra_args: tuple[str, ...] = (),
    *,
    topics: list[str] | None = None,
    timeout: float | None = None,
) -> GradeReport:
    """Run the graded tests of ``stage`` (all stages if None; only ``topics`` if given) against ``impl``.

    ``timeout``: seconds one test may run (default $LLM_COURSE_GRADE_TIMEOUT, else 120).
    Never raises for a learner's mistake: what could not be graded is in the report's ``problem``.
    """
    start = time.monotonic()
    impl_name = str(impl or os.environ.get(ENV_IMPL) or "exercises")
    try:
        root = resolve_impl(impl_name)
        files = stage_test_files(stage, topics)
        limit = default_timeout() if timeout is None else float(timeout)
        if not limit > 0:
            raise GradingError(f"the time limit must be a positive number of seconds, got {timeout!r}")
    except (FileNotFoundError, ValueError) as exc:
        return GradeReport(impl_name, [], problem=str(exc))
    args = _pytest_args(impl_name if impl_name in NAMED_IMPLS else str(root), extra_args)
    with tempfile.TemporaryDirectory() as tmp:
        collecting = _start_collection(files, args, Path(tmp))  # runs while the tests run
        with group_killed_on_exit(collecting):
            run = run_pytest([*map(str, files), *args], cwd=repo_root(), timeout=limit)
            try:
                collected = _finish_collection(collecting, Path(tmp))
            except GradingError as exc:
                return GradeReport(impl_name, [], problem=str(exc), seconds=time.monotonic() - start)
    by_id = {t["nodeid"]: t for t in collected}
    results: dict[str, dict] = {}
    broken: dict[str, str] = {}  # exercise -> the sentence of what stopped its tests
    notes: list[str] = []
    while True:
        results.update({n: r for n, r in run.results.items() if n in by_id})  # only tests the grader collected
        stuck = run.stuck
        if stuck in by_id:  # the child died or was stopped in this test: name it, run the others again
            exercise = by_id[stuck]["exercise"]
            outcome, sentence = _stopped_sentence(run, stuck, exercise, root, limit)
            results[stuck] = {"nodeid": stuck, "outcome": outcome, "exc_type": None, "message": sentence,
                              "output": _crash_excerpt(run.output)}  # fmt: skip
            broken[exercise] = sentence
            remaining = [n for n in by_id if n not in results and by_id[n]["exercise"] not in broken]
            if remaining:
                run = run_pytest([*remaining, *args], cwd=repo_root(), timeout=limit)
                continue
        elif not run.finished:  # it died outside any test
            if not results and not run.started:
                problem = f"the tests could not run (pytest exit {run.returncode}):\n{_tail(run.output)}"
                return GradeReport(impl_name, [], problem=problem, seconds=time.monotonic() - start)
            what = "was stopped after running too long" if run.timed_out else f"stopped (exit code {run.returncode})"
            last = run.started[-1].split("::")[-1] if run.started else "start-up"
            notes.append(f"the test process {what} outside any test, after {last}; the tests it had not run count as failed")
        break
    return GradeReport(impl_name, _exercises(collected, results, broken), notes=notes, seconds=time.monotonic() - start)


def _exercises(collected: list[dict], results: dict[str, dict], broken: dict[str, str]) -> list[ExerciseResult]:
    """One result per exercise, in the order the tests were collected; a test with no result failed."""
    exercises: dict[str, ExerciseResult] = {}
    for t in collected:
        new = ExerciseResult(t["exercise"], t["stage"], t["title"], 0, True, "", status="passed")
        ex = exercises.setdefault(t["exercise"], new)
        ex.points = max(ex.points, t["points"])
        ex.title = ex.title or t["title"]
        rec = results.get(t["nodeid"]) or {
            "outcome": "not run",
            "exc_type": None,
            "message": f"{t['nodeid'].split('::')[-1]} did not report a result: the test process stopped before it",
        }
        ex.tests.append({**rec, **t})  # what the grader collected wins over what the test process claims
    for ex in exercises.values():
        failing = [t for t in ex.tests if t["outcome"] != "passed"]
        if ex.name in broken:
            timed_out = any(t["outcome"] == "timeout" for t in ex.tests)
            ex.passed, ex.status, ex.reason = False, "timed out" if timed_out else "crashed", broken[ex.name]
        elif failing:
            ex.passed = False
            ex.status = "failed" if all(t["outcome"] in FINISHED for t in failing) else "not run"
            ex.reason = _explain(next((t for t in failing if t["outcome"] not in FINISHED), failing[0]))
    return list(exercises.values())


# --- the learner's table ------------------------------------------------------------------------


def _wrap(text: str, indent: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=max(40, width), initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]  # fmt: skip


def _details(test: dict, width: int) -> list[str]:
    """--verbose: a failing test's node id, inputs, random seed and the first lines of its error."""
    lines = _wrap(test["nodeid"], "      - ", width)
    if test.get("params"):
        lines += _wrap("inputs: " + ", ".join(f"{k}={v}" for k, v in test["params"].items()), "        ", width)
    if test.get("seed"):
        lines.append(f"        random seed {test['seed']} (replay with LLM_COURSE_SEED={test['seed']})")
    if test.get("where") or test.get("test_where"):
        called = f" (called from {test['test_where']})" if test.get("where") and test.get("test_where") else ""
        lines.append(f"        at {test.get('where') or test['test_where']}{called}")
    error = test.get("message") or ""
    if test.get("exc_type"):
        error = f"{test['exc_type']}: {error}"
    if test["outcome"] not in FINISHED:
        error = "the process's last output:\n" + (test.get("output") or "(none)")
    body = error.strip().splitlines()
    for line in body[:8]:
        lines += _wrap(line, "        | ", width) if line.strip() else ["        |"]
    if len(body) > 8:
        lines.append(f"        | ... ({len(body) - 8} more lines)")
    return lines


def format_report(report: GradeReport, width: int = 100, verbose: bool = False) -> str:
    """The learner's table: exercise, points, passed or not, and under a failed row, why (whole sentences).

    ``verbose``: under each failed exercise, every failing test with its inputs and the first lines of its error.
    """
    if report.problem:
        return report.problem
    lines = [f"Graded against {report.impl}/"]
    for stage, exs in report.by_stage().items():
        got, tot = sum(e.score for e in exs), sum(e.points for e in exs)
        lines += ["", f"Stage {stage}: {STAGE_NAMES.get(stage, '')}   {got}/{tot} points"]
        w = max(len(e.title or e.name) for e in exs)
        for e in exs:
            mark = "passed" if e.passed else {"crashed": "CRASHED", "timed out": "TIMED OUT", "not run": "NOT RUN"}.get(e.status, "FAILED")
            lines.append(f"  {(e.title or e.name):<{w}}  {e.score:>2}/{e.points:<2} {mark}")
            if not e.passed:
                lines += _wrap(e.reason, "      ", width)
                if verbose:
                    lines += [ln for t in e.tests if t["outcome"] not in ("passed", "not run") for ln in _details(t, width)]
                    not_run = sum(t["outcome"] == "not run" for t in e.tests)
                    if not_run:
                        lines.append(f"      - and {not_run} test{'s' * (not_run > 1)} of this exercise that did not run")
    pct = 100 * report.score / report.total if report.total else 0
    lines += ["", f"Total: {report.score}/{report.total} points ({pct:.0f}%)"]
    for note in report.notes:
        lines += _wrap("Note: " + note, "", width)
    return "\n".join(lines)


def _terminal_width() -> int:
    import shutil

    return max(60, min(120, shutil.get_terminal_size((100, 24)).columns))


def grade(
    stage: int | None = None,
    impl: str | None = None,
    show: bool = True,
    *,
    topics: list[str] | None = None,
    verbose: bool = False,
    timeout: float | None = None,
) -> GradeReport:
    """Grade one stage (or all), or only some of its topics, and print the table; for notebooks and the CLI.

    ``grade(0, topics=["bpe"])`` grades the exercises of tests/exercises/test_stage0_<k>_bpe.py.
    ``verbose=True`` lists each failing test with its inputs and the first lines of its error.
    ``timeout``: seconds one test may run before it is stopped (default 120, or $LLM_COURSE_GRADE_TIMEOUT).
    """
    report = run_tests(stage, impl, topics=topics, timeout=timeout)
    if show:
        print(format_report(report, width=_terminal_width() if sys.stdout.isatty() else 100, verbose=verbose))
    return report


def progress(impl: str | None = None, timeout: float | None = None) -> GradeReport:
    """One line per stage: points so far."""
    report = run_tests(None, impl, timeout=timeout)
    if report.problem:
        print(report.problem)
        return report
    print(f"Progress of {report.impl}/")
    for stage, exs in report.by_stage().items():
        got, tot = sum(e.score for e in exs), sum(e.points for e in exs)
        done = sum(e.passed for e in exs)
        bar = "#" * round(20 * got / tot) if tot else ""
        print(f"  Stage {stage} {STAGE_NAMES.get(stage, ''):<34} [{bar:<20}] {got:>3}/{tot:<3} points, {done}/{len(exs)} exercises")
        for e in exs:
            if e.status in ("crashed", "timed out", "not run"):
                print(textwrap.fill(e.reason, width=100, initial_indent="      ", subsequent_indent="      "))
    pct = 100 * report.score / report.total if report.total else 0
    print(f"  Total {report.score}/{report.total} points ({pct:.0f}%)")
    for note in report.notes:
        print("  Note: " + note)
    return report
