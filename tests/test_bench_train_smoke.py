"""The training-step benchmark (``llm-course bench train``) runs end to end at tiny sizes and writes its files."""

from __future__ import annotations

import json
import math

from llm_course.bench import train
from llm_course.cli import BENCHES


def test_tiny_run_writes_csv_meta_and_chart(tmp_path, capsys):
    assert BENCHES["train"] == "llm_course.bench.train"
    args = ["--models", "gpt2-tiny", "--paths", "torch,triton+cublas", "--batch", "2", "--seq", "16",
            "--warmup", "1", "--steps", "2", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    assert train.main(args) == 0
    assert "tok/s" in capsys.readouterr().out
    rows = train.read_csv(tmp_path / "train.csv")
    assert [(r.model, r.path, r.batch, r.seq) for r in rows] == [("gpt2-tiny", "torch", 2, 16), ("gpt2-tiny", "triton+cublas", 2, 16)]
    torch_row = rows[0]
    assert torch_row.error == "" and torch_row.tokens_per_s > 0 and torch_row.wall_ms > 0
    assert math.isfinite(torch_row.loss_first) and torch_row.loss_last < torch_row.loss_first  # it trains
    # bf16 runs on the CPU only on the torch backend: a Triton kernel in the interpreter refuses it, and the
    # failed path is a row with its error, not the end of the run
    assert rows[1].error == "" or "bfloat16" in rows[1].error
    assert json.loads((tmp_path / "train_meta.json").read_text())["benchmark"] == "train"
    assert (tmp_path / "train_speed.png").stat().st_size > 0


def test_unknown_path_is_an_error_naming_it(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="no-such-path"):
        train.main(["--paths", "torch,no-such-path", "--out", str(tmp_path)])
