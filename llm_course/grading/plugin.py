"""A pytest plugin that records each graded test's outcome for the grader.

Loaded by the grader as ``-p llm_course.grading.plugin``; with
``--llm-course-report FILE`` it writes one JSON record per test: the exercise
it belongs to (from ``@pytest.mark.exercise``), its outcome, and, for a
failure, the exception type and the first line of its message. Tests write
their assertion messages as plain sentences for the learner, so that first
line is what the grader shows.
"""

from __future__ import annotations

import json

import pytest

_records: dict[str, dict] = {}


def pytest_addoption(parser):
    parser.addoption("--llm-course-report", default=None, help="write graded results as JSON to this file")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    mark = item.get_closest_marker("exercise")
    rec = _records.setdefault(
        item.nodeid,
        {
            "nodeid": item.nodeid,
            "exercise": mark.args[0] if mark and mark.args else (mark.kwargs.get("name") if mark else None),
            "stage": mark.kwargs.get("stage") if mark else None,
            "points": mark.kwargs.get("points", 1) if mark else 0,
            "title": mark.kwargs.get("title", "") if mark else "",
            "outcome": "passed",
            "exc_type": None,
            "message": "",
        },
    )
    if report.skipped and rec["outcome"] == "passed":
        rec["outcome"] = "skipped"
        rec["message"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    elif report.failed and rec["outcome"] in ("passed", "skipped"):
        rec["outcome"] = "failed" if call.when == "call" else "error"
        if call.excinfo is not None:
            exc = call.excinfo.value
            rec["exc_type"] = type(exc).__name__
            rec["message"] = (str(exc).strip().splitlines() or [""])[0][:300]


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--llm-course-report")
    if path:
        with open(path, "w") as f:
            json.dump(list(_records.values()), f, indent=1)
