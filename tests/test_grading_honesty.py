"""The grading is honest: checked on every `make test`.

For every stage with graded exercises:
* every graded test passes on ``solutions/``;
* every graded test fails on the untouched ``exercises/`` stubs, and fails
  *because of NotImplementedError* -- not an import error, a collection error
  or a wrong fixture;
* ``exercises/`` and ``solutions/`` hold the same files and functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llm_course.grading.adapter import repo_root
from llm_course.grading.grader import run_tests, stage_test_files

ROOT = repo_root()
STAGES = sorted({int(p.name.split("_")[1].removeprefix("stage")) for p in stage_test_files()})


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_exercises_and_solutions_mirror_each_other():
    ex = {p.relative_to(ROOT / "exercises") for p in (ROOT / "exercises").rglob("*.py")}
    so = {p.relative_to(ROOT / "solutions") for p in (ROOT / "solutions").rglob("*.py")}
    assert ex == so, f"files only in exercises/: {sorted(ex - so)}; only in solutions/: {sorted(so - ex)}"
    for rel in ex:
        assert _functions(ROOT / "exercises" / rel) == _functions(ROOT / "solutions" / rel), rel


@pytest.mark.parametrize("stage", STAGES)
def test_solutions_score_everything(stage):
    report = run_tests(stage, "solutions")
    assert not report.problem, report.problem
    assert report.complete, f"graded tests that crashed or did not report on solutions/: {report.notes} {report.exercises}"
    failed = [(t["nodeid"], t["message"]) for e in report.exercises for t in e.tests if t["outcome"] != "passed"]
    assert not failed, f"graded tests failing on solutions/: {failed}"
    assert report.score == report.total > 0


@pytest.mark.parametrize("stage", STAGES)
def test_stubs_fail_every_test_because_not_implemented(stage):
    report = run_tests(stage, "exercises")
    assert not report.problem, report.problem
    assert report.complete, f"graded tests that crashed or did not report on the stubs: {report.notes}"
    tests = [t for e in report.exercises for t in e.tests]
    assert tests, f"stage {stage}: no graded tests ran"
    wrong = [(t["nodeid"], t["outcome"], t["exc_type"]) for t in tests
             if t["outcome"] not in ("failed", "error") or t["exc_type"] != "NotImplementedError"]
    assert not wrong, f"stage {stage}: tests that did not fail with NotImplementedError on the stubs: {wrong}"
    assert report.score == 0
