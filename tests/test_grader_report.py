"""The grader's words reach the learner: whole sentences, the learner's file and line, clear refusals.

Fast tests, in this process: the table's layout, ``--verbose``, which tests a
stage or topic selects, how an error raised in the learner's code is described,
and the sentence (never a traceback) for a stage, topic or folder that does not
exist. The grader's runs against broken submissions are in test_grader_robustness.py.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from llm_course.cli import main
from llm_course.grading import plugin
from llm_course.grading.adapter import load, repo_root
from llm_course.grading.grader import (
    ExerciseResult,
    GradeReport,
    GradingError,
    _explain,
    format_report,
    graded_stages,
    stage_test_files,
)

ROOT = repo_root()
HINT = (
    "merge([1, 2, 3, 1, 2], (1, 2), 9) must give [9, 3, 9], got [9, 2, 3, 9, 2]. After a merge, skip both ids of "
    "the pair: move on by 2, not by 1, or the second id of the pair is merged again with whatever follows it, "
    "which is the hint a learner needs and must read to the very last word: zanzibar."
)


def _test(nodeid: str, **fields) -> dict:
    return {"nodeid": nodeid, "outcome": "failed", "exc_type": "AssertionError", "message": HINT, **fields}


def _report(reason: str = HINT, tests: list[dict] | None = None) -> GradeReport:
    ex = ExerciseResult("bpe_merge", 0, "BPE: merge a pair", 2, False, reason, tests or [], status="failed")
    ok = ExerciseResult("bpe_decode", 0, "BPE: decode tokens", 2, True, "", [], status="passed")
    return GradeReport("exercises", [ex, ok])


@pytest.mark.parametrize("width", [60, 100])
def test_the_whole_sentence_is_wrapped_under_its_row(width):
    text = format_report(_report(), width=width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    assert "..." not in text
    assert " ".join(text.split()).count(" ".join(HINT.split())) == 1, "every word of the sentence, in order"
    row = next(i for i, line in enumerate(lines) if "BPE: merge a pair" in line)
    assert "FAILED" in lines[row] and lines[row + 1].startswith("      merge([1, 2, 3"), "the sentence sits under its row"
    assert text.startswith("Graded against exercises/") and "Total: 2/4 points (50%)" in text


def test_the_sentence_of_an_assertion_is_its_first_paragraph_without_pytest_details():
    message = HINT + "\nassert [9, 2, 3, 9, 2] == [9, 3, 9]\n  At index 1 diff: 2 != 3"
    assert _explain(_test("t", message=message)) == HINT
    assert _explain(_test("t", message="first line\nsecond line\n\nlater paragraph")) == "first line second line"
    assert _explain(_test("t", exc_type="NotImplementedError", message="merge: replace each pair\nmore")) == (
        "not done yet (merge: replace each pair)"
    )


def test_the_plugin_keeps_the_whole_message():
    long = "x" * 1000 + " the end"
    try:
        raise AssertionError(long + "\n\nsecond paragraph")
    except AssertionError as exc:
        info = plugin._describe(exc, ROOT / "exercises", ROOT / "tests")
    assert info["message"].startswith(long) and info["message"].endswith("second paragraph")


def test_verbose_lists_each_failing_test_with_its_inputs_seed_and_error():
    tests = [
        _test("tests/exercises/test_stage0_1_bpe.py::test_merge[n=3]", params={"n": "3", "dtype": "torch.float16"},
              seed="1234", test_where="test_stage0_1_bpe.py:81"),  # fmt: skip
        {"nodeid": "tests/exercises/test_stage0_1_bpe.py::test_merge_ok", "outcome": "passed"},
        _test("tests/exercises/test_stage0_1_bpe.py::test_merge_errs", exc_type="ValueError", message="bad\n" * 20,
              where="stage0_tokens/bpe.py:12", test_where="test_stage0_1_bpe.py:90"),  # fmt: skip
    ]
    quiet, loud = format_report(_report(tests=tests)), format_report(_report(tests=tests), verbose=True)
    assert "test_merge[n=3]" not in quiet
    assert "tests/exercises/test_stage0_1_bpe.py::test_merge[n=3]" in loud
    assert "inputs: n=3, dtype=torch.float16" in loud
    assert "LLM_COURSE_SEED=1234" in loud
    assert "test_merge_ok" not in loud, "passing tests are not listed"
    assert "at stage0_tokens/bpe.py:12 (called from test_stage0_1_bpe.py:90)" in loud
    assert "ValueError: bad" in loud and "(12 more lines)" in loud, "the first lines of the error, then a count"


def test_an_error_in_an_interpreted_kernel_names_the_learners_file_line_and_whole_message(tmp_path):
    """A misspelled tl. name: Triton's interpreter wraps it as InterpreterError(repr(e)); the grader unwraps it."""
    sub = tmp_path / "sub"
    shutil.copytree(ROOT / "solutions", sub)
    path = sub / "stage1_kernels" / "add.py"
    source = path.read_text()
    kernel = source.index("# BEGIN EXERCISE", source.index("@triton.jit"))  # the kernel's body
    assert "tl.arange(" in source[kernel:]
    path.write_text(source[:kernel] + source[kernel:].replace("tl.arange(", "tl.arrange(", 1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "tl.arrange(" in text)
    mod = load("stage1_kernels/add", sub)
    with pytest.raises(Exception) as caught:
        mod.add_forward(torch.ones(10), torch.ones(10))
    info = plugin._describe(caught.value, sub, ROOT / "tests")
    assert info["exc_type"] == "AttributeError"
    assert info["message"] == "module 'triton.language' has no attribute 'arrange'"
    assert info["where"] == f"stage1_kernels/add.py:{line}" and "tl.arrange(" in info["code"]
    sentence = _explain({"nodeid": "t", "outcome": "failed", **info})
    assert sentence.startswith(f"your code raised AttributeError at stage1_kernels/add.py:{line} (`")
    assert sentence.endswith(": module 'triton.language' has no attribute 'arrange'")


def test_a_topic_selects_its_test_file():
    assert [p.name for p in stage_test_files(0, ["bpe"])] == ["test_stage0_1_bpe.py"]
    assert [p.name for p in stage_test_files(0, "bpe")] == ["test_stage0_1_bpe.py"]
    every = stage_test_files(0)
    assert len(every) > 1 and stage_test_files(0, [p.name.split("_", 3)[3][:-3] for p in every]) == every
    assert 0 in graded_stages()


def test_an_unknown_stage_or_topic_names_what_exists():
    with pytest.raises(GradingError, match=r"stage 7 has no graded exercises; the stages with graded exercises are: 0, "):
        stage_test_files(7)
    with pytest.raises(GradingError, match=r"stage 0 has no exercise topic 'bpee'; its topics are: bpe, "):
        stage_test_files(0, ["bpee"])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["grade", "7"], "stage 7 has no graded exercises; the stages with graded exercises are: 0"),
        (["grade", "0", "--topic", "bpee"], "stage 0 has no exercise topic 'bpee'; its topics are: bpe"),
        (["grade", "0", "--impl", "/nonexistent/submission"], "implementation directory '/nonexistent/submission' not found"),
        (["grade", "0", "--timeout", "0"], "the time limit must be a positive number of seconds"),
        (["progress", "--impl", "/nonexistent/submission"], "implementation directory '/nonexistent/submission' not found"),
    ],
)
def test_the_command_refuses_in_one_sentence_and_exits_non_zero(argv, words, capsys):
    assert main(argv) != 0
    out = capsys.readouterr()
    assert out.out.strip().startswith(words), out.out
    assert len(out.out.strip().splitlines()) == 1 and "Traceback" not in out.out + out.err
