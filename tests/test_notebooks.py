"""The lab and the notebooks as a learner finds them in a fresh clone.

* ``make lab`` starts JupyterLab at the repository root on the first notebook, so that
  ``exercises/`` and the committed charts of ``results/`` are reachable from the Lab;
* the stored outputs are those of the untouched stubs in the pinned environment: no
  "using your implementation", no full marks, no path of the machine that made them,
  the versions of requirements.txt in 00a's environment check;
* every notebook with exercises ends with a cell that grades exactly its exercises,
  and between them the notebooks of a stage grade all of that stage's exercises;
* ``make test-notebooks`` compares the stub run with the stored outputs strictly and
  the solutions run up to the exercise tags and the grader's table.

The notebooks themselves run under nbval (``make test-notebooks``), not here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIRST = ROOT / "notebooks" / "00a_text_to_tokens.ipynb"


def load_execute_module():
    spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "tests" / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"])


def outputs_text(cell: dict) -> str:
    execute = load_execute_module()
    return "".join(execute.output_text(o) for o in cell.get("outputs", []))


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def make_dry_run(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


# --- make lab ------------------------------------------------------------------------------


def lab_command() -> list[str]:
    (line,) = [ln for ln in make_dry_run("lab") if "jupyter lab" in ln]
    return line.split()


def test_make_lab_starts_at_the_repository_root_on_the_first_notebook():
    cmd = lab_command()
    assert "--ServerApp.root_dir=." in cmd, cmd  # the Lab sees notebooks/, exercises/ and results/
    opened = [a for a in cmd if a.endswith(".ipynb")]
    assert opened == ["notebooks/00a_text_to_tokens.ipynb"] and FIRST.exists(), cmd
    assert "notebooks/" not in cmd and "notebooks" not in cmd  # not started inside notebooks/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_lab_serves_the_first_notebook_the_exercises_and_the_charts(tmp_path):
    """Start the Lab as ``make lab`` does (headless, on 127.0.0.1) and fetch what a learner opens."""
    cmd = lab_command()
    if not Path(ROOT, cmd[0]).exists():
        pytest.skip(f"{cmd[0]} is not installed")
    port, token = free_port(), uuid.uuid4().hex
    cmd += ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}"]  # fmt: skip
    if os.geteuid() == 0 and "--allow-root" not in cmd:
        cmd.append("--allow-root")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if get(f"{base}/api/status?token={token}") == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, "jupyter lab exited at start"
            assert time.monotonic() < deadline, "jupyter lab did not answer within 90 s"
            time.sleep(0.5)
        paths = ["lab/tree/notebooks/00a_text_to_tokens.ipynb", "api/contents/exercises",
                 "api/contents/notebooks/00a_text_to_tokens.ipynb"]  # fmt: skip
        paths += ["files/" + p for p in sorted({img for nb in NOTEBOOKS for img in local_images(nb)})]
        statuses = {p: get(f"{base}/{p}?token={token}") for p in paths}
        assert all(s == 200 for s in statuses.values()), statuses
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def local_images(nb_path: Path) -> list[str]:
    """The markdown images of a notebook that are files of the repository, relative to its root."""
    found = []
    for cell in read(nb_path)["cells"]:
        if cell["cell_type"] == "markdown":
            for link in IMAGE.findall(source(cell)):
                if "://" not in link:
                    found.append((nb_path.parent / link).resolve().relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chart_links_resolve_inside_the_repository(nb_path):
    for rel in local_images(nb_path):  # relative_to(ROOT) above raises for a link outside the repository
        assert (ROOT / rel).is_file(), f"{nb_path.name}: the image {rel} does not exist"


# --- stored outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_those_of_the_untouched_stubs(nb_path):
    nb = read(nb_path)
    texts = [outputs_text(c) for c in code_cells(nb)]
    everything = "\n".join(texts)
    assert "using your implementation" not in everything, f"{nb_path.name}: outputs made with a finished exercise"
    assert "Graded against solutions" not in everything and "(100%)" not in everything, nb_path.name
    tags = re.findall(r"\[exercise [^\]]*\]", everything)
    assert all("not done yet" in t for t in tags), [t for t in tags if "not done yet" not in t]
    errors = [c for c in code_cells(nb) for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{nb_path.name}: stored outputs hold an error"
    counts = [c["execution_count"] for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"{nb_path.name}: not stored from one run, top to bottom"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_is_valid_nbformat(nb_path):
    """What Jupyter checks on opening a notebook (an invalid one opens with a warning, or not at all)."""
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(nb_path, as_version=4))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_name_no_path_of_the_machine_that_made_them(nb_path):
    execute = load_execute_module()
    assert execute.find_machine_paths(read(nb_path)) == []


def test_the_machine_path_guard_sees_paths():
    execute = load_execute_module()
    nb = {"cells": [
        {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": "trace in /tmp/x.json\n"}]},
        {"cell_type": "code", "outputs": [{"output_type": "execute_result", "data": {"text/plain": f"'{ROOT}/data'"}}]},
        {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": "data/sample.jsonl\n"}]},
    ]}  # fmt: skip
    hits = execute.find_machine_paths(nb)
    assert [h.split(":")[0] for h in hits] == ["cell 0", "cell 1"], hits


def test_the_environment_check_stored_in_00a_shows_the_pinned_versions():
    first = code_cells(read(FIRST))[0]
    assert "check()" in source(first)
    text = outputs_text(first)
    shown = dict(re.findall(r"^\s+([\w.-]+)\s{2,}(\S+)\s*$", text, flags=re.MULTILINE))
    assert {"python", "torch", "triton"} <= shown.keys(), text
    python = ".".join(shown["python"].split(".")[:2])
    pins = load_execute_module().pinned_versions(python)
    names = {"yaml": "pyyaml"}
    compared = 0
    for module, version in shown.items():
        pin = pins.get(names.get(module, module).lower())
        if pin is not None:
            assert version.split("+")[0] == pin, f"00a's stored check shows {module} {version}; requirements.txt pins {pin}"
            compared += 1
    assert compared >= 5 and "torch" in shown and "triton" in shown


# --- grade cells ---------------------------------------------------------------------------


def stage_topics(stage: int) -> list[str]:
    """The <topic> of each tests/exercises/test_stage<stage>_<k>_<topic>.py."""
    files = sorted((ROOT / "tests" / "exercises").glob(f"test_stage{stage}_*_*.py"))
    return [re.match(rf"test_stage{stage}_\d+_(\w+)\.py", f.name).group(1) for f in files]


def exercised_topics(nb: dict) -> tuple[set[int], set[str]]:
    """Stages and graded topics of the exercises a notebook calls through ``exercise("stageN_x/module:fn", ...)``.

    The topic is the function's name when a topic has it (two exercises in one file, as
    ``stage5_finetune/dpo_loss:reward_accuracy``), else the module's (or the topic it starts with)."""
    stages, topics = set(), set()
    for cell in code_cells(nb):
        for stage, module, fn in re.findall(r"exercise\(\s*\"stage(\d+)_\w+/(\w+):(\w+)", source(cell)):
            known = stage_topics(int(stage))
            match = ([t for t in known if t == fn] or [t for t in known if t == module]
                     or [t for t in known if module.startswith(t + "_")])  # fmt: skip
            assert len(match) == 1, f"no graded topic for the exercise module {module!r} (topics {known})"
            stages.add(int(stage))
            topics.add(match[0])
    return stages, topics


GRADE_CALL = re.compile(r"grade\((\d+),\s*topics=\[([^\]]*)\]\)")


def grade_call(nb: dict) -> tuple[int, set[str]] | None:
    cells = code_cells(nb)
    m = GRADE_CALL.search(source(cells[-1])) if cells else None
    if m is None:
        return None
    return int(m.group(1)), set(re.findall(r"\"(\w+)\"", m.group(2)))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_with_exercises_ends_by_grading_exactly_its_exercises(nb_path):
    nb = read(nb_path)
    stages, topics = exercised_topics(nb)
    call = grade_call(nb)
    if not topics:
        assert call is None, f"{nb_path.name} has no exercise but grades some"
        return
    assert call is not None, f"{nb_path.name}: the last code cell must be grade(N, topics=[...]) for its exercises"
    assert call == (stages.pop(), topics), f"{nb_path.name}: grades {call}, has the exercises {topics}"
    text = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert f".venv/bin/llm-course grade {call[0]}" in text, f"{nb_path.name} must give the shell command too"
    assert not re.search(r"(?<!bin/)llm-course grade", text), f"{nb_path.name}: say .venv/bin/llm-course"


def test_the_notebooks_of_a_stage_grade_all_its_exercises():
    graded: dict[int, list[str]] = {}
    for nb_path in NOTEBOOKS:
        call = grade_call(read(nb_path))
        if call:
            graded.setdefault(call[0], []).extend(call[1])
    assert graded, "no notebook grades anything"
    for stage, topics in graded.items():
        assert sorted(topics) == sorted(stage_topics(stage)), f"stage {stage}: notebooks grade {topics}"


def test_readme_gives_the_notebooks_grade_command():
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/llm-course grade 0" in readme


# --- make test-notebooks: what each run compares ------------------------------------------------


def sanitizer(*names: str):
    patterns = []
    for name in names:
        text = (ROOT / "tests" / "notebooks" / name).read_text()
        patterns += re.findall(r"^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)  # as nbval reads them

    def apply(s: str) -> str:
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    return apply


STUB_TAG = "[exercise stage1_kernels/add:add: not done yet; using the reference]"
DONE_TAG = "[exercise stage1_kernels/add:add: using your implementation]"


def test_the_stub_run_is_compared_strictly():
    lines = make_dry_run("test-notebooks")
    (stubs,) = [ln for ln in lines if "LLM_COURSE_IMPL=exercises" in ln]
    assert "--nbval " in stubs + " " and "--nbval-lax" not in stubs
    assert stubs.rstrip().endswith("tests/notebooks/sanitize.cfg")
    plain = sanitizer("sanitize.cfg")
    assert plain(STUB_TAG) == STUB_TAG and plain(DONE_TAG) != plain(STUB_TAG)  # the tags are compared
    assert plain("Total: 0/17 points (0%)") != plain("Total: 17/17 points (100%)")  # and the grades
    assert plain("add, triton   41800.1 us   954 kB/s") == plain("add, triton   0.3 us   1.2 GB/s")  # not timings


def test_the_solutions_run_is_compared_up_to_the_tags_and_the_grades():
    from llm_course.grading.grader import ExerciseResult, GradeReport, format_report

    lines = make_dry_run("test-notebooks")
    (solutions,) = [ln for ln in lines if "LLM_COURSE_IMPL=solutions" in ln]
    assert "--nbval " in solutions + " " and "--nbval-lax" not in solutions
    lax = sanitizer("sanitize.cfg", "sanitize_solutions.cfg")
    assert lax(STUB_TAG) == lax(DONE_TAG)

    def table(impl, passed):
        reason = "" if passed else "not done yet (the kernel add_kernel is not written yet)"
        return format_report(GradeReport(impl, [ExerciseResult("add", 1, "Triton: vector add", 2, passed, reason)]))

    assert lax("before\n" + table("exercises", False) + "\nafter") == lax("before\n" + table("solutions", True) + "\nafter")
    assert lax("shape (10003,) True") != lax("shape (10003,) False")  # everything else is still compared


def test_make_notebooks_runs_the_script_that_stores_the_stubs_outputs():
    (line,) = [ln for ln in make_dry_run("notebooks") if "execute.py" in ln]
    assert "tests/notebooks/execute.py" in line
    execute = load_execute_module()
    assert execute.ENV["LLM_COURSE_IMPL"] == "exercises" and execute.ENV["TQDM_DISABLE"] == "1"
    pins = execute.pinned_versions("3.11")
    assert pins["torch"] and pins["triton"] and pins["numpy"] != execute.pinned_versions("3.10")["numpy"]
