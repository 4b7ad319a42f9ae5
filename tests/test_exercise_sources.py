"""Each exercise has one source: the stub in exercises/ is made from its solution.

* every committed stub is exactly what ``llm_course.grading.exercise_source``
  makes from its solution (so a stub and its solution never disagree outside the
  learner's part);
* every graded exercise has a marked region, and every region names a graded exercise;
* the stubs import only public modules of the package;
* the generator itself: the stub it writes, and the errors it gives for bad markers.
"""

from __future__ import annotations

import ast

import pytest

from llm_course.grading.exercise_source import REGENERATE, SourceError, differences, regions, stub_text
from llm_course.paths import repo_root

ROOT = repo_root()
HAS_SOLUTIONS = (ROOT / "solutions").is_dir()
needs_solutions = pytest.mark.skipif(not HAS_SOLUTIONS, reason="solutions/ is not part of this copy of the course")


def _graded_exercise_names() -> set[str]:
    """The names in ``pytest.mark.exercise("name", ...)`` of the graded test files."""
    names = set()
    for path in (ROOT / "tests" / "exercises").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exercise"
                    and node.args and isinstance(node.args[0], ast.Constant)):  # fmt: skip
                names.add(node.args[0].value)
    return names


@needs_solutions
def test_committed_stubs_are_made_from_their_solutions():
    problems = differences(ROOT)
    assert not problems, (
        "exercises/ and solutions/ disagree outside the learner's part. Edit the solution (the one "
        f"source), then regenerate the stubs with `{REGENERATE}` (or `make exercises`).\n\n" + "\n\n".join(problems)
    )


@needs_solutions
def test_every_graded_exercise_has_a_region_and_every_region_is_graded():
    graded = _graded_exercise_names()
    marked = {r.name for p in (ROOT / "solutions").rglob("*.py") for r in regions(p.read_text(), str(p))}
    assert graded - marked == set(), f"graded exercises with no '# BEGIN EXERCISE' region in solutions/: {sorted(graded - marked)}"
    assert marked - graded == set(), f"regions in solutions/ that no graded test names: {sorted(marked - graded)}"


def test_stubs_import_only_public_modules():
    bad = []
    for path in sorted((ROOT / "exercises").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            private = [m for m in modules if any(p.startswith("_") and p != "__future__" for p in m.split("."))]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {private[0]}")
    assert not bad, "exercise stubs must import only public, documented names: " + "; ".join(bad)


# --- the generator --------------------------------------------------------------------------

SOLUTION = '''\
def f(x):
    """Double x."""
    # BEGIN EXERCISE doubling
    # stub: raise NotImplementedError("f: return 2 * x")
    return 2 * x
    # END EXERCISE doubling


def step(model, batch):
    """A scaffold with a hole in the middle."""
    out = model(batch)
    # BEGIN EXERCISE the_loss
    # stub: loss = ...  # the mean of out
    # stub: if loss is ...:
    # stub:     raise NotImplementedError("step: the loss")
    loss = out.mean()
    # END EXERCISE the_loss
    return loss
'''

STUB = '''\
def f(x):
    """Double x."""
    # Your code here (exercise doubling)
    raise NotImplementedError("f: return 2 * x")


def step(model, batch):
    """A scaffold with a hole in the middle."""
    out = model(batch)
    # Your code here (exercise the_loss)
    loss = ...  # the mean of out
    if loss is ...:
        raise NotImplementedError("step: the loss")
    # End of your code (exercise the_loss)
    return loss
'''


def test_generator_replaces_each_region_by_its_stub_lines():
    assert stub_text(SOLUTION) == STUB
    assert [(r.name, r.begin, r.end) for r in regions(SOLUTION)] == [("doubling", 3, 6), ("the_loss", 12, 17)]


@pytest.mark.parametrize(
    "source, message",
    [
        ("def f():\n    return 1\n", "no '# BEGIN EXERCISE name' region"),
        ("def f():\n    # BEGIN EXERCISE a\n    return 1\n    # END EXERCISE a\n", "has no '# stub:' line"),
        ("def f():\n    # BEGIN EXERCISE a\n    # stub: pass\n    return 1\n", "has no '# END EXERCISE a' line"),
        ("def f():\n    # BEGIN EXERCISE a\n    # stub: pass\n    return 1\n    # END EXERCISE b\n", "does not close"),
        ("def f():\n    # BEGIN EXERCISE a\n    # stub: pass\n    return 1\n# END EXERCISE a\n", "does not close"),
        ("def f():\n    # stub: pass\n    return 1\n", "outside an exercise region"),
        ("def f():\n    # BEGIN EXERCISE a\n    # stub: pass\n    return 1\n    # stub: x\n    # END EXERCISE a\n", "right after"),
        ("def f():\n    # Begin exercise a\n    return 1\n", "looks like an exercise marker"),
        ("def f():\n    # BEGIN EXERCISE a\n    # stub: return (\n    return 1\n    # END EXERCISE a\n", "not valid Python"),
    ],
)
def test_generator_names_the_problem_and_the_line(source, message):
    with pytest.raises(SourceError, match=message.replace("(", r"\(")):
        stub_text(source, "solutions/x.py")


# --- the given scaffolding ----------------------------------------------------------------------


@needs_solutions
@pytest.mark.parametrize("option", [dict(window=4), dict(key_padding_mask="mask"), dict(dropout_p=0.1)])
def test_flash_attention_exercise_refuses_what_it_does_not_support(option):
    """The exercises backend falls back to the course's kernel on NotImplementedError: it must come with a sentence."""
    import torch

    from llm_course.grading import load

    mod = load("stage2_attention/flash_attention", "solutions")
    q = k = v = torch.zeros(1, 2, 8, 16)
    if "key_padding_mask" in option:
        option = dict(key_padding_mask=torch.ones(1, 8, dtype=torch.bool))
    name = next(iter(option))
    with pytest.raises(NotImplementedError, match=f"{name} is not supported"):
        mod.attention(q, k, v, **option)
