"""The profiler wrapper: a table of the top ops, a Chrome trace a learner can open."""

from __future__ import annotations

import json

import pytest
import torch

from llm_course.profiling import profile_region


def _work():
    x = torch.randn(64, 64)
    for _ in range(3):
        y = torch.relu(x @ x).softmax(dim=-1)
    return y.sum()


def test_trace_and_table(tmp_path, capsys):
    path = tmp_path / "traces" / "region.json"
    with profile_region(path, top_k=3, device="cpu") as result:
        _work()
    out = capsys.readouterr().out
    assert path.is_file()
    trace = json.loads(path.read_text())
    assert trace["traceEvents"], "the trace has no events"
    assert any("aten::mm" in e.get("name", "") for e in trace["traceEvents"])
    assert result.trace_path == path
    assert result.time_kind == "cpu"
    assert 1 <= len(result.rows) <= 3
    times = [r.time_us for r in result.rows]
    assert times == sorted(times, reverse=True)
    assert all(0 <= r.percent <= 100 for r in result.rows)
    # which ops make the top 3 depends on the machine's load; the full table must count the 3 matmuls
    with profile_region(None, top_k=50, device="cpu", show=False) as full:
        _work()
    assert any(r.name == "aten::mm" and r.calls == 3 for r in full.rows)
    assert "CPU time (ms)" in out and "region.json" in out
    table_rows = [line for line in result.table.splitlines() if line[:2].strip().isdigit()]
    assert len(table_rows) == len(result.rows)
    assert result.table in out


def test_top_k_and_quiet(capsys):
    with profile_region(top_k=1, device="cpu", show=False) as result:
        _work()
    assert len(result.rows) == 1 and result.trace_path is None
    assert capsys.readouterr().out == ""
    assert result.total_us >= result.rows[0].time_us > 0


def test_errors_propagate():
    with pytest.raises(ZeroDivisionError):
        with profile_region(device="cpu", show=False):
            1 / 0
    with pytest.raises(ValueError, match="top_k"):
        profile_region(top_k=0)
