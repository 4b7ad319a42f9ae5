"""The kernel benchmark runs end to end at tiny sizes and writes its files."""

from __future__ import annotations

import csv
import json
import math

import torch

from llm_course.bench import kernels
from llm_course.bench.common import FIELDS, BenchRow, fill_vs_baseline, format_table, measure, read_csv


def test_quick_run_writes_csv_meta_and_charts(tmp_path, capsys):
    ops = ["add", "softmax", "rms_norm_fwd_bwd", "matmul"]
    rc = kernels.main(["--quick", "--no-compile", "--targets", "--ops", ",".join(ops), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Stage-1 targets" in out and "matmul 8192^3" in out

    with (tmp_path / "kernels.csv").open() as f:
        assert next(csv.reader(f)) == FIELDS
    rows = read_csv(tmp_path / "kernels.csv")
    assert {r.op for r in rows} == set(ops)
    assert {r.impl for r in rows} == {"triton", "torch"}
    assert len(rows) == len(ops) * 2 * 2  # ops x implementations x sizes
    for r in rows:
        assert r.ok, f"{r.op} {r.impl} {r.size} failed: {r.error}"
        assert r.ms > 0 and r.flops > 0 and r.bytes > 0
        assert r.metric == ("TFLOP/s" if r.op == "matmul" else "GB/s")
        assert math.isclose(r.gbs, r.bytes / (r.ms / 1e3) / 1e9, rel_tol=1e-4)
        assert math.isfinite(r.frac_bandwidth) and math.isfinite(r.vs_torch)

    meta = json.loads((tmp_path / "kernels_meta.json").read_text())
    for key in ("device", "torch", "triton", "date", "ceilings"):
        assert key in meta
    assert meta["ceilings"]["bandwidth_gbs"] > 0 and meta["ceilings"]["flops_tflops"] > 0

    for name in ("kernels_speed.png", "kernels_roofline.png"):
        path = tmp_path / name
        assert path.stat().st_size > 1000
        path.unlink()
    kernels.draw_charts(tmp_path)  # redrawn from the CSV, without measuring
    assert (tmp_path / "kernels_speed.png").is_file() and (tmp_path / "kernels_roofline.png").is_file()


def test_a_failing_measurement_is_recorded_not_raised():
    row = BenchRow("softmax", "broken", "fp32", "4x4", 4.0, "GB/s", flops=80, bytes=128)

    def boom():
        raise RuntimeError("kernel exploded")

    measure(row, boom, warmup=0, reps=1, device=torch.device("cpu"))
    assert not row.ok and "RuntimeError: kernel exploded" in row.error

    good = BenchRow("softmax", "torch", "fp32", "4x4", 4.0, "GB/s", flops=80, bytes=128, ms=2.0)
    fast = BenchRow("softmax", "triton", "fp32", "4x4", 4.0, "GB/s", flops=80, bytes=128, ms=0.5)
    fill_vs_baseline([good, fast, row])
    assert fast.vs_torch == 4.0 and good.vs_torch == 1.0 and math.isnan(row.vs_torch)


def test_wall_time_runs_the_backward_on_the_calling_thread(monkeypatch):
    """The wall time per call is what the course's trainer pays: autograd without its worker thread."""
    from llm_course.bench import common
    from llm_course.measure.timer import Timing

    monkeypatch.setattr(common, "is_gpu", lambda device: True)  # the wall time is measured on a GPU only
    monkeypatch.setattr(common, "benchmark", lambda fn, **kw: Timing(1.0, 1.0, 1.0))
    monkeypatch.setattr(common, "device_synchronize", lambda device: None)
    seen = []
    row = BenchRow(op="add", impl="triton", dtype="fp32", size="8", x=8, metric="GB/s", flops=0.0, bytes=96.0)
    measure(row, lambda: None, warmup=0, reps=2, device=torch.device("cpu"),
            wall_fn=lambda: seen.append(torch._C._is_multithreading_enabled()))  # fmt: skip
    assert seen and not any(seen) and math.isfinite(row.wall_ms)
    assert torch._C._is_multithreading_enabled()


def test_unknown_op_is_refused(capsys):
    assert kernels.main(["--ops", "nope"]) == 2
    assert "unknown ops: nope" in capsys.readouterr().out


def test_table_prints_interpreter_speeds_with_units_that_fit():
    slow = BenchRow("softmax", "triton", "fp32", "16x128", 16.0, "GB/s", flops=80, bytes=128, ms=74.0)
    slow.gbs, slow.frac_bandwidth = 0.000219, 0.0
    mm = BenchRow("matmul", "triton", "fp32", "16^3", 16.0, "TFLOP/s", flops=80, bytes=128, ms=28.0)
    mm.tflops, mm.frac_compute = 2.93e-07, 0.0
    table = format_table([slow, mm])
    assert "219 kB/s" in table and "293 kFLOP/s" in table
    assert "0.0 GB/s" not in table and "e-0" not in table
