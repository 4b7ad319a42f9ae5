"""The backend switch (llm_course/backends/registry.py): choosing torch, triton or exercises.

Precedence (context manager > set_backend > $LLM_COURSE_BACKEND > "torch"),
nesting and restoring, unknown names, the "exercises" backend routing to the
learner's answers (here: solutions/, and a folder of stubs) with the course's
kernel as fallback, and lazy imports: ``import llm_course.ops`` loads no kernel
module, so the Triton interpreter can still be switched on first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from llm_course import ops
from llm_course.backends import get_backend, implementation, registry, set_backend, use_backend
from llm_course.device import get_device
from llm_course.grading.checks import assert_close


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch):
    """Each test starts from the default: no global setting, no $LLM_COURSE_BACKEND; restored afterwards."""
    monkeypatch.setattr(registry, "_global_backend", None)
    monkeypatch.delenv(registry.ENV_BACKEND, raising=False)
    yield
    registry._forget_exercises()


def _run_python(code: str, **env) -> str:
    import os

    full_env = {k: v for k, v in os.environ.items() if k != registry.ENV_BACKEND}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_default_is_torch():
    assert get_backend() == "torch"
    from llm_course.backends.torch_ops import softmax

    assert implementation("softmax") is softmax.softmax


def test_set_backend_and_use_backend_nest_and_restore():
    set_backend("triton")
    assert get_backend() == "triton"
    with use_backend("torch"):
        assert get_backend() == "torch"  # the context manager wins over the global setting
        with use_backend("exercises"):
            assert get_backend() == "exercises"
        assert get_backend() == "torch"
    assert get_backend() == "triton"
    with pytest.raises(RuntimeError):
        with use_backend("torch"):
            raise RuntimeError("boom")
    assert get_backend() == "triton"  # restored after an exception too
    set_backend("torch")
    assert get_backend() == "torch"


def test_env_var_chooses_the_backend(monkeypatch):
    monkeypatch.setenv(registry.ENV_BACKEND, "triton")
    assert get_backend() == "triton"
    with use_backend("torch"):
        assert get_backend() == "torch"
    set_backend("torch")  # the global setting wins over the environment
    assert get_backend() == "torch"


def test_unknown_backend_is_an_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of torch, triton, exercises"):
        set_backend("cuda")
    with pytest.raises(ValueError, match="unknown backend 'tritonn'"):
        with use_backend("tritonn"):
            pass
    monkeypatch.setenv(registry.ENV_BACKEND, "fast")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        get_backend()


def test_ops_run_the_chosen_implementation(rng):
    x = torch.randn(3, 50, generator=rng).to(get_device())
    with use_backend("triton"):
        from llm_course.backends.triton_ops import rmsnorm, softmax

        assert implementation("softmax") is softmax.softmax
        assert implementation("rms_norm") is rmsnorm.rms_norm
        y = ops.softmax(x)
    assert_close(y, torch.softmax(x.double(), -1), hint="softmax under the triton backend")


def test_import_loads_no_kernel_module_and_env_var_works_in_a_fresh_process():
    out = _run_python(
        """
        import sys
        import llm_course, llm_course.ops, llm_course.backends
        print(sorted(m for m in sys.modules if m.startswith("llm_course.backends.triton_ops.")))
        from llm_course.backends import get_backend, implementation
        print(get_backend(), implementation("softmax").__module__)
        """,
        LLM_COURSE_BACKEND="triton",
    )
    loaded, backend = out.strip().splitlines()
    assert loaded == "[]", f"import llm_course.ops imported kernel modules: {loaded}"
    assert backend == "triton llm_course.backends.triton_ops.softmax"


def test_exercises_backend_runs_the_learner_answers(monkeypatch, capsys, rng):
    from llm_course.grading.adapter import load

    monkeypatch.setenv("LLM_COURSE_IMPL", "solutions")
    mod = load("stage1_kernels/softmax", "solutions")
    calls = []
    real = mod.softmax_forward
    monkeypatch.setattr(mod, "softmax_forward", lambda x, out=None: calls.append(x.shape) or real(x, out))
    x = torch.randn(4, 33, generator=rng).to(get_device())
    with use_backend("exercises"):
        y = ops.softmax(x)
    assert calls == [x.shape], "ops.softmax under the exercises backend did not call the answer in solutions/"
    assert "[exercise stage1_kernels/softmax:softmax: using your implementation]" in capsys.readouterr().out
    assert_close(y, torch.softmax(x.double(), -1), hint="softmax through the exercises backend")
    rms = load("stage1_kernels/rmsnorm", "solutions")
    fwd_calls = []
    real_fwd = rms.rmsnorm_forward
    monkeypatch.setattr(rms, "rmsnorm_forward", lambda *a: fwd_calls.append(1) or real_fwd(*a))
    with use_backend("exercises"):
        ops.rms_norm(x, torch.ones(33, device=x.device))
    assert fwd_calls == [1], "ops.rms_norm under the exercises backend did not call the answer in solutions/"


STUB = '''
from llm_course.device import configure_triton
configure_triton()
import triton
import triton.language as tl
from llm_course.grading import require_written


@triton.jit
def softmax_kernel(x_ptr, y_ptr, n_cols, BLOCK_SIZE: tl.constexpr):
    """Not written yet."""
    raise NotImplementedError("softmax_kernel")


def softmax(x):
    """Given launcher: refuses to run while the kernel is a stub."""
    require_written(softmax_kernel)
    return None
'''


def test_exercises_backend_falls_back_to_the_course_kernel(monkeypatch, capsys, tmp_path, rng):
    (tmp_path / "stage1_kernels").mkdir()
    (tmp_path / "stage1_kernels" / "softmax.py").write_text(STUB)
    monkeypatch.setenv("LLM_COURSE_IMPL", str(tmp_path))
    x = torch.randn(4, 33, generator=rng).to(get_device())
    with use_backend("exercises"):
        y = ops.softmax(x)
        from llm_course.backends.triton_ops import softmax

        assert implementation("softmax") is softmax.softmax
        assert implementation("layer_norm") is implementation("layer_norm", "triton")  # no exercise: the course's kernel
    assert "[exercise stage1_kernels/softmax:softmax: not done yet; using the reference]" in capsys.readouterr().out
    assert_close(y, torch.softmax(x.double(), -1), hint="softmax falling back to the course's kernel")


def test_a_missing_exercise_function_falls_back_with_a_note(monkeypatch, capsys, tmp_path, rng):
    """A learner's file without the function the op needs: the course's kernel runs, and the note says why."""
    (tmp_path / "stage1_kernels").mkdir()
    (tmp_path / "stage1_kernels" / "softmax.py").write_text("def something_else():\n    pass\n")
    monkeypatch.setenv("LLM_COURSE_IMPL", str(tmp_path))
    x = torch.randn(4, 33, generator=rng).to(get_device())
    with use_backend("exercises"):
        y = ops.softmax(x)
        assert implementation("softmax") is implementation("softmax", "triton")
    assert "[exercise stage1_kernels/softmax:softmax: stage1_kernels/softmax.py has no function softmax() yet; " \
        "using the reference]" in capsys.readouterr().out
    assert_close(y, torch.softmax(x.double(), -1), hint="softmax falling back to the course's kernel")


def test_the_exercises_backend_takes_its_answers_from_a_registered_source(monkeypatch, capsys, rng):
    """The registry knows no grading package: whoever registers a source for "exercises" supplies the answers."""
    seen = []

    def source(ref, fallback):
        seen.append(ref)
        return lambda x: fallback(x) * 2

    monkeypatch.setitem(registry._SOURCES, "exercises", source)
    registry._forget_exercises()
    x = torch.randn(2, 8, generator=rng).to(get_device())
    with use_backend("exercises"):
        y = ops.softmax(x)
    assert seen == ["stage1_kernels/softmax:softmax"]
    assert_close(y, 2 * torch.softmax(x.double(), -1), hint="softmax from a registered source")


@pytest.mark.parametrize("backend", ["torch", "triton", "exercises"])
def test_the_declared_check_runs_before_every_backend(backend, monkeypatch):
    from llm_course.backends import checks

    calls = []
    spec = ops.softmax.spec
    monkeypatch.setattr(spec, "check", lambda x: calls.append(tuple(x.shape)))
    monkeypatch.setattr(checks, "softmax", spec.check)  # what the Triton softmax (checks_own_inputs) runs itself
    x = torch.zeros(2, 8, device=get_device())
    with use_backend(backend):
        ops.softmax(x)
    assert calls == [(2, 8)]
    with use_backend(backend), pytest.raises(ValueError, match=r"rms_norm: weight has shape \(3,\), expected \(8,\)"):
        ops.rms_norm(x, torch.ones(3, device=x.device))  # the same message whatever the backend


def _valid_args(name: str, dev: torch.device) -> tuple:
    """Small valid arguments for ``ops.<name>`` on ``dev`` (integer tensors built as such)."""
    x, w, b = torch.randn(3, 8, device=dev), torch.ones(8, device=dev), torch.zeros(5, device=dev)
    wide = torch.randn(5, 8, device=dev)  # a (N, K) weight, or a (V, C) table
    targets = torch.tensor([0, 4, 2], device=dev)  # int64 class indices
    cos, sin = torch.randn(4, 16, device=dev), torch.randn(4, 16, device=dev)
    q, cache = torch.randn(2, 4, 1, 16, device=dev), torch.randn(2, 2, 24, 16, device=dev)
    return {
        "layer_norm": (x, w, None),
        "rms_norm": (x, w),
        "add_layer_norm": (x, x, w, None),
        "add_rms_norm": (x, x, w),
        "add": (x, x),
        "softmax": (x,),
        "linear": (x, wide, b),
        "apply_rope": (torch.randn(1, 2, 4, 16, device=dev), cos, sin),
        "embedding": (torch.tensor([[0, 4], [2, 2]], device=dev), wide),
        "gelu_tanh": (x,),
        "silu_mul": (x, x),
        "cross_entropy": (torch.randn(3, 5, device=dev), targets),
        "fused_linear_cross_entropy": (x, wide, targets, b),
        "qkv_attention": (torch.randn(1, 4, 96, device=dev), 2),  # 2 heads of 16
        "decode_attention": (q, cache, cache, torch.tensor([3, 24], dtype=torch.int32, device=dev)),
    }[name]


# The ops whose Triton entry point runs the op's check itself (marked checks_own_inputs). Not here:
# matmul (llm_course.ops checks a and b before autocast casts them to one dtype: the check refuses two),
# attention (flash_attention.py checks its inputs its own way).
CHECKED_ONCE = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "add", "softmax", "linear", "apply_rope",
                "embedding", "gelu_tanh", "silu_mul", "cross_entropy", "fused_linear_cross_entropy", "qkv_attention",
                "decode_attention"]  # fmt: skip


def _count_checks(name: str, monkeypatch) -> list:
    """Count every run of the op's check, whoever runs it; the list it appends to."""
    from llm_course.backends import checks

    calls = []
    spec = getattr(ops, name).spec
    original = getattr(checks, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(spec, "check", counted)  # what llm_course.ops runs
    monkeypatch.setattr(checks, name, counted)  # what a Triton entry point runs
    return calls


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", CHECKED_ONCE)
def test_an_ops_call_checks_its_inputs_once(backend, name, monkeypatch):
    """These Triton entry points run the op's check themselves (a direct call is checked too), so llm_course.ops
    skips its own; every other implementation gets it from llm_course.ops. Either way: once per call, not twice."""
    calls = _count_checks(name, monkeypatch)
    args = _valid_args(name, get_device())
    with use_backend(backend):
        getattr(ops, name)(*args)
    assert calls == [name], f"{backend} {name}: the op's check ran {len(calls)} times"
    assert getattr(implementation(name, "triton"), "checks_own_inputs", False), f"triton {name} is not marked"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_linear_under_autocast_is_checked_once_and_as_before(backend, monkeypatch):
    """linear is an autocast op: llm_course.ops casts its inputs (autocast_inputs) and then, for the marked Triton
    linear, the check runs on the cast inputs, not before the cast. Nothing changes for that: inputs of two dtypes
    are still taken (autocast makes them one), and a bad input is refused with the same error on both backends,
    a meta tensor included (autocast has no state to ask for the meta device)."""
    dev = get_device()
    x, w = torch.randn(3, 8, device=dev), torch.randn(5, 8, device=dev)
    calls = _count_checks("linear", monkeypatch)
    with use_backend(backend), torch.autocast(dev.type, dtype=torch.float16):
        assert ops.linear(x, w.half()).dtype == torch.float16  # two dtypes: cast to one, then multiplied
        assert calls == ["linear"], f"{backend} linear under autocast: the op's check ran {len(calls)} times"
        bad = [
            ((torch.empty(3, 8, device="meta"), w), ValueError, r"^linear: x is on the meta device"),
            ((x, torch.empty(5, 8, device="meta")), ValueError, r"^linear: weight is on the meta device"),
            ((torch.ones(3, 8, dtype=torch.int64, device=dev), w), TypeError, r"^linear: x has dtype int64"),
            ((x, torch.randn(5, 7, device=dev)), ValueError, r"^linear: x has 8 features"),
            ((x, w, torch.zeros(4, device=dev)), ValueError, r"^linear: bias has shape \(4,\), expected \(5,\)"),
        ]
        for args, error, pattern in bad:
            with pytest.raises(error, match=pattern):
                ops.linear(*args)
