"""The generation benchmark (``llm-course bench model``) runs end to end at tiny sizes and writes its files.

Also checked here, because the benchmark's numbers rest on them: the byte and FLOP count of
a decode step, and that the plain PyTorch baseline decodes the same tokens as the course's
model on the same weights (otherwise the comparison would not be one).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch

from llm_course.bench import model as bench
from llm_course.bench.baseline_decoder import BaselineDecoder
from llm_course.generation.generate import generate
from llm_course.models import GPT2LMHeadModel, Qwen2ForCausalLM, load_model_config

MODELS = {"gpt2-tiny": GPT2LMHeadModel, "qwen2-tiny": Qwen2ForCausalLM}


@pytest.mark.slow
def test_quick_run_writes_csv_meta_and_charts(tmp_path, capsys):
    argv = ["--quick", "--models", "gpt2-tiny,qwen2-tiny", "--batch", "1", "--prefill", "6", "--new-tokens", "3",
            "--reps", "1", "--paths", "torch,baseline", "--targets", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "Generation targets" in out and "qwen2-7b batch 1" in out

    with (tmp_path / "model.csv").open() as f:
        assert next(csv.reader(f)) == bench.FIELDS
    rows = bench.read_csv(tmp_path / "model.csv")
    assert {(r.model, r.path) for r in rows} == {(m, p) for m in MODELS for p in ("torch", "baseline")}
    for r in rows:
        assert r.ok, f"{r.model} {r.path} failed: {r.error}"
        assert r.batch == 1 and r.prefill == 6 and r.new_tokens == 3
        assert r.wall_ms > 0 and r.prefill_ms > 0 and r.setup_s > 0
        assert math.isclose(r.tok_s, 1e3 / r.wall_ms, rel_tol=1e-4)
        assert math.isclose(r.frac_bw, r.step_bytes / (r.wall_ms / 1e3) / 1e9 / json.loads(
            (tmp_path / "model_meta.json").read_text())["ceilings"]["bandwidth_gbs"], rel_tol=1e-3)  # fmt: skip
        assert math.isclose(r.e2e_tok_s, 3 * 1e3 / (r.prefill_ms + 2 * r.wall_ms), rel_tol=1e-3)  # 1 + 2 steps

    meta = json.loads((tmp_path / "model_meta.json").read_text())
    for key in ("device", "torch", "triton", "transformers", "date", "ceilings", "prefill", "new_tokens", "paths",
                "targets", "fastest_course_path"):
        assert key in meta
    for name in ("model_speed.png", "model_roofline.png"):
        assert (tmp_path / name).stat().st_size > 1000
        (tmp_path / name).unlink()
    assert bench.main(["--redraw", "--out", str(tmp_path)]) == 0  # from the files, no measuring
    assert (tmp_path / "model_speed.png").is_file() and (tmp_path / "model_roofline.png").is_file()


def test_a_failing_path_is_recorded_and_the_run_goes_on(monkeypatch):
    real = bench.make_runner

    def broken(path, *args):
        if path == "baseline":
            raise RuntimeError("kernel exploded")
        return real(path, *args)

    monkeypatch.setattr(bench, "make_runner", broken)
    rows = bench.run(["gpt2-tiny"], [1], 4, 2, ["torch", "baseline"], "fp32", torch.device("cpu"), None, reps=1, show=False)
    by_path = {r.path: r for r in rows}
    assert not by_path["baseline"].ok and "RuntimeError: kernel exploded" in by_path["baseline"].error
    assert by_path["torch"].ok


def test_past_the_time_budget_rows_are_skipped_with_a_note():
    rows = bench.run(["gpt2-tiny"], [1], 4, 2, ["torch"], "fp32", torch.device("cpu"), None, budget_s=0.0, show=False)
    assert len(rows) == 1 and rows[0].error.startswith("skipped: past the time budget")
    assert "skipped" in bench.format_table(rows)


def test_unknown_path_is_refused_through_the_command_line(capsys):
    from llm_course.cli import BENCHES, main

    assert BENCHES["model"] == "llm_course.bench.model"
    assert main(["bench", "model", "--paths", "torch,warp-drive"]) == 2
    assert "unknown paths: warp-drive" in capsys.readouterr().out


@pytest.mark.parametrize("tied", [True, False])
def test_step_cost_reads_each_matrix_once_and_embedding_rows_per_token(tied):
    cfg = dataclasses.replace(load_model_config("qwen2-tiny"), tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(cfg)
    B, ctx = 3, 10.0
    flops, weight_bytes, kv_bytes = bench.step_cost(model, B, ctx)
    C, V, L, D = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.head_dim
    total = sum(p.numel() for p in model.parameters())  # a tied matrix once
    # untied: the input table is only looked up (B rows), the output matrix is read whole
    read = total if tied else total - V * C + B * C
    assert weight_bytes == read * 4
    assert kv_bytes == L * 2 * B * cfg.num_kv_heads * ctx * D * 4
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)  # norms' gains, biases
    matmul = total - vectors - (0 if tied else V * C)
    assert flops == 2 * B * matmul + L * 4 * B * cfg.n_head * ctx * D


def test_step_cost_of_gpt2_counts_the_position_table_per_token():
    cfg = load_model_config("gpt2-tiny")
    model = GPT2LMHeadModel(cfg)
    _, weight_bytes, _ = bench.step_cost(model, 2, 5.0)
    total = sum(p.numel() for p in model.parameters())
    assert weight_bytes == (total - cfg.block_size * cfg.n_embd + 2 * cfg.n_embd) * 4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_baseline_decoder_gives_the_course_models_tokens(name, rng):
    torch.manual_seed(0)
    model = MODELS[name](load_model_config(name)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=rng)
    want = generate(model, ids, max_new_tokens=5, use_cache=False)
    dec = BaselineDecoder(model, 2, 12)
    logits = dec.prefill(ids)
    torch.testing.assert_close(logits, model(ids)[:, -1], rtol=1e-4, atol=1e-4)
    got = [ids]
    for i in range(5):
        tok = logits.argmax(-1, keepdim=True)
        got.append(tok)
        if i < 4:
            logits = dec.step(tok)
    assert torch.equal(torch.cat(got, dim=1), want)


def test_targets_compare_the_fastest_course_path():
    def row(model, path, tok_s, frac=0.5):
        r = bench.GenRow(model, 1, path, "bf16", 512, 256, 1.0, 1.0, 0.0, 1.0, wall_ms=1e3 / tok_s, tok_s=tok_s,
                         prefill_ms=10.0, e2e_tok_s=tok_s / 2, frac_bw=frac, frac_bw_gpu=frac)  # fmt: skip
        return r

    rows = [row("qwen2-0.5b", "graph-torch", 300), row("qwen2-0.5b", "graph-triton+cublas", 500),
            row("qwen2-0.5b", "baseline-compile", 450), row("qwen2-0.5b", "hf-generate", 120),
            row("qwen2-7b", "graph-triton+cublas", 100, frac=0.6), row("qwen2-7b", "baseline-compile", 110)]  # fmt: skip
    verdicts = {name.split(":")[0] + name[-12:]: v for name, v, _ in bench.check_targets(rows)}
    got = [v for _, v, _ in bench.check_targets(rows)]
    assert got == ["PASS", "FAIL", "PASS", "FAIL"], verdicts  # 500 >= 450; 100 < 110; 60% >= 55%; 500/120 < 5
    assert bench.fastest_course_row(rows, "qwen2-0.5b", 1).path == "graph-triton+cublas"


@pytest.mark.slow
def test_hf_generate_row_on_the_same_weights():
    pytest.importorskip("transformers")
    rows = bench.run(["qwen2-tiny"], [1], 5, 8, ["hf-generate"], "fp32", torch.device("cpu"), None, reps=1, show=False)
    assert rows[0].ok, rows[0].error
    assert rows[0].tok_s > 0 and "generate" in rows[0].note
