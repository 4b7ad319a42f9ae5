"""A pytest plugin that reports graded tests to the grader.

Loaded by the grader as ``-p llm_course.grading.plugin``, in one of two ways:

* ``--collect-only --llm-course-collect FILE``: writes the graded tests it
  collected (node id, exercise, points, title, parameters) to FILE, and the
  learner's modules that collecting imported (there must be none: the tests
  load the learner's code inside each test, through the ``impl`` fixture).
  This run imports no learner code, so the grader can trust it.
* run mode, with the grader's channel (see :mod:`llm_course.grading.runner`):
  when this module loads, before any learner code is imported, it reads the
  run's token from an inherited pipe and removes the channel's description from
  the environment. Then it writes one JSON line per event to the report pipe:
  ``start`` before each test, ``result`` after it (outcome, exception type,
  the whole message, the learner's file and line), ``finish`` at the end.

Tests write their assertion messages as plain sentences for the learner, so the
message's first paragraph is what the grader shows.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import os
import re
import signal
import sys
import traceback
from pathlib import Path

import pytest

from llm_course.grading.runner import ENV_CHANNEL, ENV_PARENT


class _Channel:
    """The write end of the grader's report pipe and the run's token."""

    def __init__(self, spec: str):
        report_fd, token_fd, grader_pid = (int(x) for x in spec.split(","))
        self.token = os.read(token_fd, 256).decode()
        os.close(token_fd)
        self.fd = report_fd
        os.set_inheritable(report_fd, False)  # processes the tests start do not get it
        _die_with(grader_pid)
        self.dump_fd = os.dup(2)  # the grader's output file, before pytest captures fd 2
        faulthandler.register(signal.SIGUSR1, file=self.dump_fd, all_threads=True)  # "where was it stuck?"

    def send(self, kind: str, **fields) -> None:
        data = (json.dumps({"token": self.token, "kind": kind, **fields}, default=str) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data) :]


def _die_with(grader_pid: int) -> None:
    """Linux: this process is killed if the grader dies (it cannot be left running alone)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != grader_pid:
        os._exit(1)


_spec = os.environ.pop(ENV_CHANNEL, None)
_channel = _Channel(_spec) if _spec else None
if os.environ.get(ENV_PARENT):  # the grader's collection run: it too must not outlive the grader
    _die_with(int(os.environ.pop(ENV_PARENT)))
del _spec
_results: dict[str, dict] = {}


def pytest_addoption(parser):
    parser.addoption("--llm-course-collect", default=None, help="write the collected graded tests as JSON to this file")


def _exercise_mark(item) -> dict:
    mark = item.get_closest_marker("exercise")
    return {
        "exercise": mark.args[0] if mark and mark.args else (mark.kwargs.get("name") if mark else None),
        "stage": mark.kwargs.get("stage") if mark else None,
        "points": mark.kwargs.get("points", 1) if mark else 0,
        "title": mark.kwargs.get("title", "") if mark else "",
    }


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _impl_root(config) -> Path | None:
    from llm_course.grading.adapter import resolve_impl

    try:
        return resolve_impl(config.getoption("--impl", default=None))
    except (FileNotFoundError, ValueError):
        return None


def _inside(filename: str, root: Path | None) -> bool:
    if root is None or not filename:
        return False
    with contextlib.suppress(OSError, ValueError):
        return Path(filename).resolve().is_relative_to(root)
    return False


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    path = session.config.getoption("--llm-course-collect")
    if not path:
        return
    root = _impl_root(session.config)
    tests = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        params = {k: _short(v) for k, v in callspec.params.items()} if callspec else {}
        tests.append({"nodeid": item.nodeid, "file": item.path.name, "params": params, **_exercise_mark(item)})
    learner = sorted(name for name, m in list(sys.modules.items()) if _inside(getattr(m, "__file__", None) or "", root))
    with open(path, "w") as f:
        json.dump({"tests": tests, "learner_modules": learner}, f, indent=1)


# --- run mode ---------------------------------------------------------------------------------


def pytest_runtest_logstart(nodeid, location):
    if _channel is not None:
        _channel.send("start", nodeid=nodeid)


def _describe(exc: BaseException, root: Path | None, tests_dir: Path) -> dict:
    """Type, whole message and where it happened; an interpreter's wrapper is replaced by the error it wraps."""
    chain = [exc]
    while type(chain[-1]).__name__ == "InterpreterError" and chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)  # Triton's interpreter raises InterpreterError(repr(e)) from e
    error = chain[-1]
    frames = [fs for e in chain for fs in traceback.extract_tb(e.__traceback__)]
    mine = [fs for fs in frames if _inside(fs.filename, root)]
    in_test = [fs for fs in frames if _inside(fs.filename, tests_dir)]
    info = {
        "exc_type": type(error).__name__,
        "message": str(error).strip(),
        "raised_in_impl": bool(frames) and _inside(frames[-1].filename, root),
        "where": None,
        "code": None,
        "test_where": f"{Path(in_test[-1].filename).name}:{in_test[-1].lineno}" if in_test else None,
    }
    if mine:
        fs = mine[-1]
        info["where"] = f"{Path(fs.filename).resolve().relative_to(root)}:{fs.lineno}"
        info["code"] = (fs.line or "").strip() or None
    return info


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _channel is None:
        return
    report = outcome.get_result()
    rec = _results.setdefault(
        item.nodeid, {"nodeid": item.nodeid, "outcome": "passed", "exc_type": None, "message": "", **_exercise_mark(item)}
    )
    if report.skipped and rec["outcome"] == "passed":
        rec["outcome"] = "skipped"
        rec["message"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    elif report.failed and rec["outcome"] in ("passed", "skipped"):
        rec["outcome"] = "failed" if call.when == "call" else "error"
        if call.excinfo is not None:
            rec.update(_describe(call.excinfo.value, _impl_root(item.config), Path(item.path).parent))
    seed = re.search(r"random seed: (\d+)", report.capstdout or "")
    if seed:
        rec["seed"] = seed.group(1)


def pytest_runtest_logfinish(nodeid, location):
    if _channel is not None and nodeid in _results:
        _channel.send("result", **_results[nodeid])


def pytest_sessionfinish(session, exitstatus):
    if _channel is not None:
        _channel.send("finish", exitstatus=int(exitstatus))
