"""The training-step benchmark (``llm-course bench train``) runs end to end at tiny sizes and writes its files."""

from __future__ import annotations

import json
import math

import pytest

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
    with pytest.raises(SystemExit, match="no-such-path"):
        train.main(["--paths", "torch,no-such-path", "--out", str(tmp_path)])


def test_graph_path_on_a_cpu_is_a_row_naming_the_gpu_it_needs(tmp_path):
    args = ["--models", "gpt2-tiny", "--paths", "triton.graph", "--batch", "1", "--seq", "8",
            "--warmup", "1", "--steps", "1", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    assert train.main(args) == 0
    (row,) = train.read_csv(tmp_path / "train.csv")
    assert "need a CUDA GPU" in row.error


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["triton+cublas.graph", "triton.graph"])
def test_graph_step_trains_like_the_eager_step(path):
    """The captured step replays the eager one: from the same weights and batch, the same losses."""
    import torch

    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1000, (2, 64), generator=g).to(device)
    losses = {}
    for p in (path.replace(".graph", ""), path):
        step, _ = train.build_step(p, "gpt2-tiny", device)
        if p.endswith(".graph"):
            step(x, x)  # the capture (two warm-up steps and the recording): the weights move on
        else:
            for _ in range(3):  # the same three updates, eagerly
                step(x, x)
        losses[p] = [float(step(x, x)) for _ in range(4)]
    eager, graph = losses[path.replace(".graph", "")], losses[path]
    assert graph[-1] < graph[0], f"{path} does not train: {graph}"
    assert max(abs(a - b) for a, b in zip(eager, graph)) < 2e-2, f"eager {eager} vs graph {graph}"


def test_the_baseline_is_left_out_for_other_families(tmp_path):
    args = ["--models", "gpt2-tiny,qwen2-tiny", "--paths", "baseline.compile,torch", "--batch", "1", "--seq", "8",
            "--warmup", "0", "--steps", "1", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    assert train.main(args) == 0
    rows = train.read_csv(tmp_path / "train.csv")
    assert [(r.model, r.path) for r in rows] == [("gpt2-tiny", "baseline.compile"), ("gpt2-tiny", "torch"), ("qwen2-tiny", "torch")]
    assert all(r.error == "" for r in rows), [r.error for r in rows]
    assert rows[1].vs_baseline > 0 and math.isnan(rows[2].vs_baseline)


def test_a_model_trains_at_its_own_context_when_seq_is_longer(tmp_path, capsys):
    """course-lm has 512 positions: --seq 1024 runs it at 512 (the table's T says so), not past its tables."""
    from llm_course.models.config import load_model_config

    block = load_model_config("qwen2-tiny").block_size
    args = ["--models", "qwen2-tiny", "--paths", "torch", "--batch", "1", "--seq", str(block + 7),
            "--warmup", "0", "--steps", "1", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    assert train.main(args) == 0
    (row,) = train.read_csv(tmp_path / "train.csv")
    assert row.error == "" and row.seq == block
    out = capsys.readouterr().out
    assert " T " in out and f" {block} " in out and "nanx" not in out  # no baseline: "-", not "nanx"


def test_zoo_names_configs_that_exist():
    from llm_course.models.config import load_model_config

    assert "gpt2-124m" in train.ZOO
    for name in train.ZOO:
        load_model_config(name)
