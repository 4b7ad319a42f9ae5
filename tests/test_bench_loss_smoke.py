"""The loss benchmark (``llm-course bench loss``) runs end to end at tiny sizes and writes its files."""

from __future__ import annotations

import csv
import json
import math

from llm_course.bench import loss
from llm_course.cli import BENCHES


def test_quick_run_writes_csv_and_meta(tmp_path, capsys):
    assert BENCHES["loss"] == "llm_course.bench.loss"
    assert loss.main(["--quick", "--out", str(tmp_path)]) == 0
    assert "fused" in capsys.readouterr().out
    with (tmp_path / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["impl"] for r in rows] == list(loss.IMPLS) * len(loss.SIZES["quick"])
    for r in rows:
        assert r["error"] == "", r["error"]
        assert float(r["ms"]) > 0 and float(r["loss_diff"]) < 1e-4
        assert math.isclose(float(r["logits_mib"]), int(r["N"]) * int(r["V"]) * 4 / 2**20)
    assert json.loads((tmp_path / "loss_meta.json").read_text())["benchmark"] == "loss"
