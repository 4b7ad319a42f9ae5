"""Smoke tests of ``llm-course bench attention`` and ``llm-course bench layers`` (--quick, into a temporary folder).

They check that the scripts run end to end and write their files, not any speed.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from llm_course.device import has_gpu


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    from llm_course.bench import attention

    out = tmp_path_factory.mktemp("bench_attention")
    assert attention.main(["--quick", "--out", str(out), "--targets"]) == 0
    return out


def test_attention_bench_writes_its_files(attention_run):
    for name in ("attention.csv", "attention_memory.csv", "attention_meta.json", "attention_tflops.png", "attention_memory.png"):
        assert (attention_run / name).stat().st_size > 0, name
    meta = json.loads((attention_run / "attention_meta.json").read_text())
    assert meta["benchmark"] == "attention" and meta["ceilings"]["bandwidth_gbs"] > 0
    assert set(meta["autotuned"]) == {"_flash_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}


def test_attention_bench_measures_triton_and_sdpa(attention_run):
    rows = list(csv.DictReader((attention_run / "attention.csv").open()))
    ops = {r["op"] for r in rows}
    assert {"fwd d16 full", "fwd d16 causal", "bwd d16 full", "bwd d16 causal", "rope"} <= ops
    for r in rows:
        if r["impl"] in ("triton", "sdpa", "torch"):
            assert r["error"] == "" and math.isfinite(float(r["tflops"] or r["gbs"])), r
        if r["impl"] == "sdpa_flash" and not has_gpu():
            assert "GPU" in r["error"], "the FLASH backend row should say it needs a GPU"


def test_attention_bench_records_the_autotuners_choices(monkeypatch):
    """One line per kernel and tuning key: the key's values, then the tile that won."""
    import triton

    from llm_course.backends.triton_ops import flash_attention
    from llm_course.bench import attention

    class Tuned:  # what the bench reads of a triton.autotune object
        keys = ["T_BUCKET", "HEAD_DIM"]
        cache = {(1024, 128, "torch.bfloat16"): triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=2)}
        fn = flash_attention._flash_fwd_kernel.fn

    monkeypatch.setattr(flash_attention, "_flash_fwd_kernel", Tuned())
    chosen = attention.autotune_choices()
    assert chosen["_flash_fwd_kernel"] == ["T_BUCKET=1024, HEAD_DIM=128 -> BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2"]
    assert set(chosen) == {"_flash_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}


def test_attention_bench_redraws_from_its_files(attention_run):
    from llm_course.bench import attention

    (attention_run / "attention_tflops.png").unlink()
    assert attention.main(["--redraw", "--out", str(attention_run)]) == 0
    assert (attention_run / "attention_tflops.png").exists()


def test_layers_bench_quick(tmp_path):
    from llm_course.bench import layers

    assert layers.main(["--quick", "--out", str(tmp_path), "--layers", "attention,swiglu_mlp"]) == 0
    rows = list(csv.DictReader((tmp_path / "layers.csv").open()))
    assert {(r["layer"], r["backend"], r["passes"]) for r in rows} == {
        (layer, backend, passes)
        for layer in ("attention", "swiglu_mlp")
        for backend in ("torch", "triton")
        for passes in ("fwd", "fwd+bwd")
    }
    assert all(r["error"] == "" and float(r["ms"]) > 0 for r in rows), [r["error"] for r in rows if r["error"]]
    assert (tmp_path / "layers.png").stat().st_size > 0
