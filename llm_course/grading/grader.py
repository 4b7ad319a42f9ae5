"""Grade the exercises: run their tests against an implementation, print a table.

``llm-course grade 0`` in a shell, or ``grade(0)`` in a notebook. The tests of
stage N live in ``tests/exercises/test_stageN_<k>_<topic>.py`` (k: the order in which
the course meets them, which is the order of the table); each test is marked with
the exercise it checks::

    @pytest.mark.exercise("bpe_merge", stage=0, points=2, title="BPE: merge a pair")

An exercise scores its points when all of its tests pass. A failure is shown
as one plain sentence: the first line of the test's assertion message (tests
write those for the learner), or "not done yet" for a stub that still raises
``NotImplementedError``.

The tests run in a fresh Python process, so the learner's latest edits are
always the ones graded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llm_course.grading.adapter import ENV_IMPL, repo_root, resolve_impl

STAGE_NAMES = {
    0: "text to tokens, and how to measure",
    1: "Triton kernels",
    2: "attention and RoPE",
    3: "GPT-2 and Qwen2",
    4: "data and pretraining",
    5: "SFT, DPO, multi-GPU",
}


@dataclass
class ExerciseResult:
    name: str
    stage: int
    title: str
    points: int
    passed: bool
    reason: str  # one plain sentence when failed, "" when passed
    tests: list[dict] = field(default_factory=list)

    @property
    def score(self) -> int:
        return self.points if self.passed else 0


@dataclass
class GradeReport:
    impl: str
    exercises: list[ExerciseResult]
    problem: str = ""  # set when the tests could not run at all

    @property
    def score(self) -> int:
        return sum(e.score for e in self.exercises)

    @property
    def total(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def all_passed(self) -> bool:
        return not self.problem and bool(self.exercises) and all(e.passed for e in self.exercises)

    def by_stage(self) -> dict[int, list[ExerciseResult]]:
        out: dict[int, list[ExerciseResult]] = {}
        for e in self.exercises:
            out.setdefault(e.stage, []).append(e)
        return dict(sorted(out.items()))


def stage_test_files(stage: int | None = None) -> list[Path]:
    """The graded test files of one stage (or of all stages)."""
    pattern = f"test_stage{stage}_*.py" if stage is not None else "test_stage*_*.py"
    return sorted((repo_root() / "tests" / "exercises").glob(pattern))


def _explain(test: dict) -> str:
    exc, msg = test["exc_type"], test["message"]
    if exc == "NotImplementedError":
        return "not done yet" + (f" ({msg})" if msg else "")
    if exc == "AssertionError" and msg:
        return msg
    if test["outcome"] == "skipped":
        return "skipped: " + (msg or "not runnable here")
    return f"crashed with {exc}: {msg}" if exc else "failed"


def run_tests(stage: int | None, impl: str | None, extra_args: tuple[str, ...] = ()) -> GradeReport:
    """Run the graded tests in a fresh process and collect one result per exercise."""
    impl_name = str(impl or os.environ.get(ENV_IMPL) or "exercises")
    files = stage_test_files(stage)
    if not files:
        return GradeReport(impl_name, [], problem=f"no graded tests found for stage {stage}")
    resolve_impl(impl_name)  # a clear error now rather than inside pytest
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pytest", *map(str, files), "-q", "-p", "no:cacheprovider",
            "-p", "llm_course.grading.plugin", f"--llm-course-report={report_path}",
            f"--impl={impl_name}", "-o", "addopts=", *extra_args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True, env=env)
        records = json.loads(report_path.read_text()) if report_path.exists() else []
    if proc.returncode not in (0, 1) or not records:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return GradeReport(impl_name, [], problem=f"the tests could not run (pytest exit {proc.returncode}):\n{tail}")
    exercises: dict[str, ExerciseResult] = {}
    for rec in records:
        if rec["exercise"] is None:
            continue
        ex = exercises.setdefault(
            rec["exercise"],
            ExerciseResult(rec["exercise"], rec["stage"], rec["title"], 0, True, ""),
        )
        ex.points = max(ex.points, rec["points"])
        ex.title = ex.title or rec["title"]
        ex.tests.append(rec)
        if rec["outcome"] != "passed" and ex.passed:
            ex.passed, ex.reason = False, _explain(rec)
    return GradeReport(impl_name, sorted(exercises.values(), key=lambda e: (e.stage, _order(e, records))))


def _order(ex: ExerciseResult, records: list[dict]) -> int:
    return next(i for i, r in enumerate(records) if r["exercise"] == ex.name)


def format_report(report: GradeReport, width: int = 120) -> str:
    """The learner's table: exercise, points, passed or not, and why not."""
    lines = [f"Graded against {report.impl}/"]
    if report.problem:
        return "\n".join(lines + [report.problem])
    for stage, exs in report.by_stage().items():
        got, tot = sum(e.score for e in exs), sum(e.points for e in exs)
        lines += ["", f"Stage {stage}: {STAGE_NAMES.get(stage, '')}   {got}/{tot} points"]
        w = max(len(e.title or e.name) for e in exs)
        for e in exs:
            mark = "passed" if e.passed else "FAILED"
            row = f"  {(e.title or e.name):<{w}}  {e.score:>2}/{e.points:<2} {mark}"
            if not e.passed:
                room = max(20, width - len(row) - 3)
                reason = e.reason if len(e.reason) <= room else e.reason[: room - 3] + "..."
                row += f"  {reason}"
            lines.append(row)
    pct = 100 * report.score / report.total if report.total else 0
    lines += ["", f"Total: {report.score}/{report.total} points ({pct:.0f}%)"]
    return "\n".join(lines)


def grade(stage: int | None = None, impl: str | None = None, show: bool = True) -> GradeReport:
    """Grade one stage (or all) and print the table; for notebooks and the CLI."""
    report = run_tests(stage, impl)
    if show:
        print(format_report(report))
    return report


def progress(impl: str | None = None) -> GradeReport:
    """One line per stage: points so far."""
    report = run_tests(None, impl)
    print(f"Progress of {report.impl}/")
    if report.problem:
        print(report.problem)
        return report
    for stage, exs in report.by_stage().items():
        got, tot = sum(e.score for e in exs), sum(e.points for e in exs)
        done = sum(e.passed for e in exs)
        bar = "#" * round(20 * got / tot) if tot else ""
        print(f"  Stage {stage} {STAGE_NAMES.get(stage, ''):<34} [{bar:<20}] {got:>3}/{tot:<3} points, {done}/{len(exs)} exercises")
    pct = 100 * report.score / report.total if report.total else 0
    print(f"  Total {report.score}/{report.total} points ({pct:.0f}%)")
    return report
