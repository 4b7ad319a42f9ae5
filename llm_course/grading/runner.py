"""Run graded tests in a child process that cannot write its own grade and cannot hang the grader.

The grader never trusts a file the tests could write. It starts pytest (with
the plugin :mod:`llm_course.grading.plugin`) in a child process and hands it
two inherited pipe ends:

* a *token* pipe: a random per-run token, which the plugin reads and closes
  when it loads, before any learner code is imported (so the token is in no
  file, no argument and no environment variable);
* a *report* pipe: the plugin writes one JSON line per event, each carrying the
  token: ``start`` before a test runs, ``result`` after it, ``finish`` when the
  session ends normally.

Lines without the token, results for a test that was not the one started, and
anything after the first result of a test are ignored. So the grader always
knows which test was running when the child died (a crash in the interpreter,
``os._exit`` in a learner's file), and a submission that writes a report file
and exits scores nothing.

The child runs in its own session (process group). A test running past the
time limit (an endless loop) first gets SIGUSR1, which makes the plugin dump
the Python stack (so the grader can say where it was stuck), then the whole
group is killed. The group is also killed when the grader itself is
interrupted (Ctrl-C, SIGTERM) and when the child ends, so no pytest is left
running at 100% CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV_CHANNEL = "LLM_COURSE_GRADER_CHANNEL"  # "<report fd>,<token fd>,<grader pid>", read and removed by the plugin
ENV_PARENT = "LLM_COURSE_GRADER_PARENT"  # the grader's pid, for its collection run (which gets no channel)
ENV_TIMEOUT = "LLM_COURSE_GRADE_TIMEOUT"  # seconds a single test may run
DEFAULT_TIMEOUT = 120.0
STARTUP_TIMEOUT = 120.0  # seconds allowed outside any test (start-up, collection, session end)


def default_timeout() -> float:
    """Seconds one graded test may run: $LLM_COURSE_GRADE_TIMEOUT, else 120."""
    value = os.environ.get(ENV_TIMEOUT)
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{ENV_TIMEOUT}={value!r} is not a number of seconds") from None


@dataclass
class ChildRun:
    """What one pytest child reported, trusted records only."""

    results: dict[str, dict] = field(default_factory=dict)  # nodeid -> the plugin's result record
    started: list[str] = field(default_factory=list)  # nodeids in the order they started
    finished: bool = False  # the session reached its normal end
    returncode: int | None = None  # negative: killed by that signal
    timed_out: bool = False  # the grader stopped it for running past the limit
    seconds: float = 0.0  # how long the stuck test (or phase) had been running when stopped
    output: str = ""  # the child's stdout and stderr

    @property
    def stuck(self) -> str | None:
        """The test that started and never reported a result (the one running when the child died)."""
        return self.started[-1] if self.started and self.started[-1] not in self.results else None


def _read_lines(fd: int, out: queue.Queue) -> None:
    """Put each complete line read from ``fd`` on ``out`` until end of file (a partial last line is dropped)."""
    buf = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                out.put(line)
    os.close(fd)
    out.put(None)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads its own session), then reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


@contextlib.contextmanager
def group_killed_on_exit(proc: subprocess.Popen):
    """However the block ends (normally, Ctrl-C, SIGTERM, an error), the child's process group is gone."""

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through the finally below, as Ctrl-C does

    old = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        _kill_group(proc)  # also ends whatever the tests started and left behind
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def run_pytest(args: list[str], *, cwd: Path, timeout: float, env: dict | None = None) -> ChildRun:
    """Run ``python -m pytest ARGS`` in a child process and collect its trusted records.

    ``timeout``: seconds a single test may run before the child's group is
    killed. Outside tests (start-up, collection) the limit is the larger of it
    and ``STARTUP_TIMEOUT``.
    """
    token = secrets.token_hex(16)
    report_r, report_w = os.pipe()
    token_r, token_w = os.pipe()
    os.write(token_w, token.encode())
    os.close(token_w)
    env = dict(os.environ if env is None else env)
    env[ENV_CHANNEL] = f"{report_w},{token_r},{os.getpid()}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    run = ChildRun()
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, pass_fds=(report_w, token_r), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(report_w)
            os.close(token_r)
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(report_r, lines), daemon=True)
        reader.start()
        current, since = None, time.monotonic()  # the test running now, and when the last event came
        with group_killed_on_exit(proc):
            while True:
                try:
                    run.returncode = proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                current, since = _take(lines, token, run, current, since)
                limit = timeout if current is not None else max(timeout, STARTUP_TIMEOUT)
                if time.monotonic() - since > limit:
                    run.timed_out, run.seconds = True, time.monotonic() - since
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGUSR1)  # the plugin dumps the stack: where was it stuck?
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=1.0)
                    break
        run.returncode = proc.returncode
        reader.join(timeout=5)
        _take(lines, token, run, current, since)
        output.seek(0)
        run.output = output.read().decode(errors="replace")
    return run


def _take(lines: queue.Queue, token: str, run: ChildRun, current, since):
    """Apply the records waiting in ``lines`` to ``run``; returns the (current test, time of last event)."""
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return current, since
        if line is None:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or rec.pop("token", None) != token:
            continue  # not from the plugin: ignored
        kind, nodeid = rec.get("kind"), rec.get("nodeid")
        if kind == "start" and isinstance(nodeid, str) and nodeid not in run.started:
            run.started.append(nodeid)
            current, since = nodeid, time.monotonic()
        elif kind == "result" and nodeid is not None and nodeid == current:
            run.results[nodeid] = rec
            current, since = None, time.monotonic()
        elif kind == "finish":
            run.finished = True
