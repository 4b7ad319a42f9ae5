"""Each op is declared once (llm_course/ops.py) and everything agrees with that declaration.

* every op in ``llm_course.ops`` is a declared op, and every declared op is in ``llm_course.ops``;
* every declared op has a torch and a Triton implementation, and both take exactly
  the op's parameters (names, kinds, defaults), as does its input check;
* the ``exercises`` backend reaches every kernel exercise: with the answers of
  ``solutions/`` it runs the learner's function (FlashAttention included), which
  also takes the op's parameters; with the untouched stubs it runs the course's kernel.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from op_samples import SAMPLES

from llm_course import ops
from llm_course.backends import declared_ops, implementation, registry, use_backend
from llm_course.device import get_device

OPS = declared_ops()
EXERCISES = {name: spec.exercise for name, spec in OPS.items() if spec.exercise}


def _params(fn) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter: what a caller relies on (annotations are text, left out)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.fixture(autouse=True)
def fresh_resolution(monkeypatch):
    monkeypatch.setattr(registry, "_global_backend", None)
    monkeypatch.delenv(registry.ENV_BACKEND, raising=False)
    registry._forget_exercises()
    yield
    registry._forget_exercises()


def test_ops_module_and_declarations_are_the_same_set():
    public = {name for name, fn in vars(ops).items() if inspect.isfunction(fn) and fn.__module__ == ops.__name__}
    assert public == set(OPS), f"functions of llm_course.ops that are not declared ops: {sorted(public - set(OPS))}"
    for name, spec in OPS.items():
        fn = getattr(ops, name)
        assert fn.spec is spec
        assert fn.__doc__ and spec.doc, f"ops.{name} has no docstring"
        assert _params(fn) == [(p.name, p.kind, p.default) for p in spec.signature.parameters.values()]


def test_every_op_names_its_check():
    for name, spec in OPS.items():
        assert spec.check is not None, f"op {name!r} declares no input check (llm_course/backends/checks.py)"
        assert _params(spec.check) == _params(getattr(ops, name)), f"checks.{spec.check.__name__} and ops.{name} differ"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_has_both_implementations_with_its_signature(name, backend):
    fn = implementation(name, backend)
    expected = registry.PACKAGES[backend]
    assert fn.__module__.startswith(expected + "."), f"{name}/{backend} comes from {fn.__module__}, not {expected}"
    assert _params(fn) == _params(getattr(ops, name)), (
        f"{fn.__module__}.{fn.__name__} takes {inspect.signature(fn)}, "
        f"but ops.{name} declares {inspect.signature(getattr(ops, name))}"
    )


def test_the_kernel_exercises_are_all_declared():
    """The graded kernel exercises that implement an op of the package."""
    assert EXERCISES == {
        "add": "stage1_kernels/add:add",
        "softmax": "stage1_kernels/softmax:softmax",
        "rms_norm": "stage1_kernels/rmsnorm:rms_norm",
        "matmul": "stage1_kernels/matmul:matmul",
        "apply_rope": "stage2_attention/rope:apply_rope",
        "attention": "stage2_attention/flash_attention:attention",
        "decode_attention": "stage3_models/decode_attention:decode_attention",
        "cross_entropy": "stage4_training/cross_entropy:cross_entropy",
    }


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_exercises_backend_runs_each_solution(name, monkeypatch, capsys):
    from llm_course.grading.adapter import load

    monkeypatch.setenv("LLM_COURSE_IMPL", "solutions")
    topic, _, fname = EXERCISES[name].partition(":")
    learner = getattr(load(topic, "solutions"), fname, None)
    assert learner is not None, f"solutions/{topic}.py has no function {fname}"
    assert _params(learner) == _params(getattr(ops, name)), (
        f"the exercise {EXERCISES[name]} takes {inspect.signature(learner)}, "
        f"but ops.{name} declares {inspect.signature(getattr(ops, name))}"
    )
    fn = implementation(name, "exercises")
    assert inspect.unwrap(fn) is learner, f"use_backend('exercises') does not run {EXERCISES[name]} for ops.{name}"
    assert f"[exercise {EXERCISES[name]}: using your implementation]" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_exercises_backend_falls_back_while_a_stub_is_untouched(name, monkeypatch, capsys):
    """With the untouched stubs, ``ops.<name>`` under the exercises backend gives the course's kernel's answer."""
    monkeypatch.setenv("LLM_COURSE_IMPL", "exercises")
    args, kwargs = SAMPLES[name](get_device())
    with use_backend("exercises"):
        got = getattr(ops, name)(*args, **kwargs)
    out = capsys.readouterr().out
    assert f"[exercise {EXERCISES[name]}: " in out and "using the reference" in out, out
    expected = implementation(name, "triton")(*args, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


COMPOSITES = {name: spec.composite for name, spec in OPS.items() if spec.composite}


def test_the_fused_ops_have_compositions_of_the_ops_they_fuse():
    assert COMPOSITES == {"add_layer_norm": "add_layer_norm", "add_rms_norm": "add_rms_norm",
                          "qkv_attention": "qkv_attention"}  # fmt: skip
    for name in COMPOSITES:
        assert OPS[name].exercise is None, f"{name} has an exercise of its own: it needs no composition"


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_each_composition_has_its_ops_signature_and_result(name):
    fn = implementation(name, "exercises")
    assert fn.__module__ == registry.COMPOSITES
    assert _params(fn) == _params(getattr(ops, name))
    args, kwargs = SAMPLES[name](get_device())
    got = fn(*args, **kwargs)
    expected = implementation(name, "torch")(*args, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, inner", [("add_rms_norm", "rms_norm"), ("add_layer_norm", "add"),
                                         ("qkv_attention", "attention")])  # fmt: skip
def test_a_fused_op_runs_the_learners_answers_inside_it(name, inner, monkeypatch, capsys):
    """Under the exercises backend a model's fused op must not hide the learner's kernel: with the
    solutions, the op inside it runs the learner's function."""
    monkeypatch.setenv("LLM_COURSE_IMPL", "solutions")
    args, kwargs = SAMPLES[name](get_device())
    with use_backend("exercises"):
        got = getattr(ops, name)(*args, **kwargs)
    assert f"[exercise {EXERCISES[inner]}: using your implementation]" in capsys.readouterr().out
    torch.testing.assert_close(got, implementation(name, "torch")(*args, **kwargs), rtol=1e-4, atol=1e-4)


def test_a_composite_beside_an_exercise_is_refused():
    with pytest.raises(ValueError, match="needs no composite"):
        registry.declare("a_test_op", inspect.signature(lambda x: x), torch=lambda x: x, exercise="t:f", composite="f")
