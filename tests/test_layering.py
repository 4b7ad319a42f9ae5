"""The package's layers: the runtime sits below the grading, never on top of it.

The runtime (device, paths, ops, backends, models, measure, data, tokenizer, bench,
profiling, and later training) must work where ``llm_course.grading`` is absent. The
grading package plugs the learner's exercises into the backend switch
(``registry.register_source``); nothing in the runtime imports it. Checked twice:

* by reading the sources: no runtime module has an ``import`` of ``llm_course.grading``;
* by running: in a fresh process where ``llm_course.grading`` cannot be imported,
  every declared op runs on the torch and triton backends, and the exercises
  backend falls back to the course's kernels with a note.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import llm_course

PACKAGE = Path(llm_course.__file__).resolve().parent
ABOVE_THE_RUNTIME = {"grading", "cli.py"}  # the grading package, and the command line that reaches everything


def _runtime_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in ABOVE_THE_RUNTIME]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, wherever it is (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_runtime_module_imports_the_grading_package():
    modules = _runtime_modules()
    assert len(modules) > 20 and any(p.name == "registry.py" for p in modules)
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in modules
        for line, name in _imported_modules(path)
        if name == "llm_course.grading" or name.startswith("llm_course.grading.")
    ]
    assert not offenders, "the runtime must not import llm_course.grading:\n" + "\n".join(offenders)


RUN_WITHOUT_GRADING = """
import importlib.abc, json, sys

class BlockGrading(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "llm_course.grading" or name.startswith("llm_course.grading."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockGrading())

import torch
sys.path.insert(0, TESTS)
from op_samples import SAMPLES
from llm_course import ops
from llm_course.backends import declared_ops, implementation, use_backend
from llm_course.device import get_device

results = {"missing_samples": sorted(set(declared_ops()) - set(SAMPLES))}
for name in sorted(declared_ops()):
    args, kwargs = SAMPLES[name](get_device())
    outs = {}
    for backend in ("torch", "triton", "exercises"):
        with use_backend(backend):
            out = getattr(ops, name)(*args, **kwargs)
            outs[backend] = torch.cat([o.double().flatten() for o in out]) if isinstance(out, tuple) else out.double()
    results[name] = {
        "triton_vs_torch": (outs["triton"] - outs["torch"]).abs().max().item(),
        "exercises_is_triton": torch.equal(outs["exercises"], outs["triton"]),
        "exercises_impl_is_triton": implementation(name, "exercises") is implementation(name, "triton"),
    }
results["grading_loaded"] = sorted(m for m in sys.modules if m.startswith("llm_course.grading"))
print("RESULTS " + json.dumps(results))
"""


def test_the_runtime_runs_every_op_without_the_grading_package():
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_COURSE_BACKEND", "LLM_COURSE_IMPL")}
    code = f"TESTS = {str(Path(__file__).parent)!r}\n" + textwrap.dedent(RUN_WITHOUT_GRADING)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    assert results.pop("missing_samples") == [], "add the new op to tests/op_samples.py"
    assert results.pop("grading_loaded") == []
    for name, r in results.items():
        assert r["triton_vs_torch"] < 1e-3, f"{name}: triton and torch disagree by {r['triton_vs_torch']}"
        assert r["exercises_is_triton"] and r["exercises_impl_is_triton"], f"{name}: exercises backend without grading"
    assert "no source of exercises is installed; using the course's kernel" in proc.stdout
