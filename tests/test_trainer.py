"""The trainer: config errors, schedule, token-averaged accumulation, exact resume, atomic
checkpoints, NaN stop. A tiny GPT-2 and a synthetic data source keep every test fast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm_course.training import checkpoint as ckpt
from llm_course.training.config import TrainConfig, load_train_config
from llm_course.training.schedule import lr_at
from llm_course.training.trainer import resolve_loss_fn, train, unigram_loss
from tests.trainer_helpers import SyntheticData, tiny_config, tiny_model


def quiet(*args, **kwargs):
    pass


def run(out_dir, model=None, data=None, resume=False, loss_fn=None, **overrides):
    cfg = tiny_config(out_dir, **overrides)
    return train(cfg, model=model or tiny_model(), data=data or SyntheticData(), loss_fn=loss_fn, resume=resume,
                 print_fn=quiet)  # fmt: skip


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- config -------------------------------------------------------------------------------------


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model_config_path: gpt2-tiny\ndata: {type: local, path: x}\nmax_steps: 3\nmax_step: 4\n")
    with pytest.raises(ValueError, match=r"run\.yaml.*unknown key 'max_step'"):
        load_train_config(f)
    f.write_text("model_config_path: gpt2-tiny\ndata: {type: local, path: x}\nmax_steps: 3\noptimizer: {lrr: 1}\n")
    with pytest.raises(ValueError, match=r"run\.yaml.*unknown key 'optimizer\.lrr'"):
        load_train_config(f)


def test_missing_and_bad_values(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model_config_path: gpt2-tiny\ndata: {type: local, path: x}\n")
    with pytest.raises(ValueError, match="missing key 'max_steps'"):
        load_train_config(f)
    f.write_text("model_config_path: gpt2-tiny\ndata: {type: local, path: x}\nmax_steps: 3\nprecision: fp8\n")
    with pytest.raises(ValueError, match="precision='fp8'"):
        load_train_config(f)
    with pytest.raises(ValueError, match="batch_size=0"):
        load_train_config(f, overrides={"precision": "fp32", "batch_size": 0})


@pytest.mark.parametrize("name", ["gpt2-tiny-cpu", "gpt2-124m"])
def test_shipped_configs_load(name):
    cfg = load_train_config(name)
    assert isinstance(cfg, TrainConfig) and cfg.max_steps > 0


def test_schedule_warmup_then_cosine():
    kw = dict(lr=1.0, warmup_steps=10, decay_steps=110, min_lr=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway down the cosine: the mean of lr and min_lr
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    after = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:]))


# --- the step -----------------------------------------------------------------------------------


def test_accumulation_is_token_averaged(tmp_path):
    """4 micro-batches of 2 rows == 1 batch of 8 rows, although the rows hold different numbers of
    real tokens (so a plain mean of the 4 micro-batch means would be wrong)."""
    a, b = tiny_model(), tiny_model()
    ra = run(tmp_path / "a", model=a, max_steps=2, batch_size=8, grad_accum_steps=1, grad_clip=None)
    rb = run(tmp_path / "b", model=b, max_steps=2, batch_size=2, grad_accum_steps=4, grad_clip=None)
    for ha, hb in zip(ra.history, rb.history):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-6)
        assert ha["grad_norm"] == pytest.approx(hb["grad_norm"], rel=1e-5)
    for k, v in weights(a).items():
        torch.testing.assert_close(weights(b)[k], v, rtol=1e-4, atol=1e-5)  # Adam magnifies fp rounding a little

    # the reference: token-mean loss of the first 8 rows on the initial model; the naive mean differs
    m, (x, y) = tiny_model(), SyntheticData().next_batch(8)
    logits = m(x)
    ref = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100).item()
    naive = sum(F.cross_entropy(logits[i : i + 2].flatten(0, 1), y[i : i + 2].flatten(), ignore_index=-100).item()
                for i in range(0, 8, 2)) / 4  # fmt: skip
    assert rb.history[0]["loss"] == pytest.approx(ref, rel=1e-6)
    assert abs(naive - ref) > 1e-3  # the data makes the difference visible


def test_training_lowers_the_loss_and_logs(tmp_path):
    r = run(tmp_path, max_steps=12, eval_every=6, eval_batches=2)
    assert r.stopped == "done" and r.history[-1]["loss"] < r.history[0]["loss"]
    assert r.val_loss is not None and math.isfinite(r.val_loss) and r.unigram_loss > 0
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,lr,grad_norm") and len(lines) == 1 + 12 + 2  # steps + 2 evals


def test_backward_runs_on_the_calling_thread(tmp_path):
    """The trainer switches autograd's device worker threads off for its steps (a thread hand-off per
    backward that one GPU per process does not need) and leaves the setting as it found it."""
    seen = []

    def loss_fn(model, x, y):
        logits = model(x)
        seen.append(torch._C._is_multithreading_enabled())
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)

    assert torch._C._is_multithreading_enabled()
    run(tmp_path, max_steps=2, loss_fn=loss_fn)
    assert len(seen) >= 2 and not any(seen)  # both steps (and the final evaluation)
    assert torch._C._is_multithreading_enabled()


def test_unigram_baseline_is_a_smoothed_frequency_model():
    counts, targets = torch.tensor([3, 1, 0]), torch.tensor([0, 1, 2, 0])  # add-one: p = 4/7, 2/7, 1/7
    expected = -(2 * math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 4
    assert unigram_loss(counts, targets) == pytest.approx(expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    r = run(tmp_path, max_steps=2, precision=precision)
    assert r.stopped == "done" and all(math.isfinite(h["loss"]) for h in r.history)


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path):
    from llm_course.training.trainer import enable_activation_checkpointing

    assert enable_activation_checkpointing(tiny_model()) == 2  # both blocks wrapped
    plain = run(tmp_path / "a", max_steps=2)
    recomputed = run(tmp_path / "b", max_steps=2, activation_checkpointing=True)
    for a, b in zip(plain.history, recomputed.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compile_changes_nothing_but_speed(tmp_path, monkeypatch, backend):
    """``compile: true`` on either backend: the same losses as eager. The Triton kernels are custom
    ops under compile (llm_course/backends/triton_ops/custom_ops.py); ``aot_eager`` traces them as
    inductor would, without generating code (inductor on a GPU: ``bench train``)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager", fullgraph=True))
    plain = run(tmp_path / "a", max_steps=2, backend=backend)
    torch._dynamo.reset()
    compiled = run(tmp_path / "b", max_steps=2, backend=backend, compile=True)
    torch._dynamo.reset()
    for a, b in zip(plain.history, compiled.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


# --- resume -------------------------------------------------------------------------------------


def test_resume_is_bit_for_bit(tmp_path):
    """6 steps in one go == 3 steps, a checkpoint, a new process state, 3 more steps (with dropout,
    so the RNG state must be restored too)."""
    sched = {"warmup_steps": 2, "min_lr": 3e-4, "decay_steps": 6}
    full_model = tiny_model(dropout=0.1)
    full = run(tmp_path / "full", model=full_model, max_steps=6, schedule=sched)
    run(tmp_path / "split", model=tiny_model(dropout=0.1), max_steps=3, schedule=sched)
    torch.manual_seed(1234)  # disturb the global RNG: the resume must restore it
    resumed_model = tiny_model(seed=99, dropout=0.1)  # other initial weights: the checkpoint must replace them
    second = run(tmp_path / "split", model=resumed_model, data=SyntheticData(), max_steps=6, schedule=sched, resume="auto")
    assert [h["step"] for h in second.history] == [4, 5, 6]
    assert [h["loss"] for h in second.history] == [h["loss"] for h in full.history[3:]]
    for k, v in weights(full_model).items():
        assert torch.equal(weights(resumed_model)[k], v), k


def test_ctrl_c_mid_step_saves_and_resumes_exactly(tmp_path):
    full_model = tiny_model()
    full = run(tmp_path / "full", model=full_model, max_steps=5, grad_accum_steps=2)
    calls, course_loss = {"n": 0}, resolve_loss_fn()  # the loss the other runs use

    def interrupting_loss(model, x, y):
        calls["n"] += 1
        if calls["n"] == 6:  # the second micro-batch of step 3
            raise KeyboardInterrupt
        return course_loss(model, x, y)

    r = run(tmp_path / "cut", max_steps=5, grad_accum_steps=2, loss_fn=interrupting_loss)
    assert r.stopped == "interrupted" and ckpt.latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step_00000002"
    resumed_model = tiny_model(seed=5)
    second = run(tmp_path / "cut", model=resumed_model, max_steps=5, grad_accum_steps=2, resume="auto")
    assert [h["loss"] for h in second.history] == [h["loss"] for h in full.history[2:]]
    for k, v in weights(full_model).items():
        assert torch.equal(weights(resumed_model)[k], v), k


# --- checkpoints --------------------------------------------------------------------------------


def _save(root, step, model, keep_last=None):
    opt = torch.optim.AdamW(model.parameters())
    return ckpt.save_checkpoint(root, step, model=model, optimizer=opt, data_states=[{"cursor": step}],
                                keep_last=keep_last)  # fmt: skip


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = tiny_model()
    _save(tmp_path, 1, model)
    before = weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, model)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]  # no temporary folder left
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000001"
    fresh = tiny_model(seed=3)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), model=fresh)
    assert state["data"] == [{"cursor": 1}]
    for k, v in before.items():
        assert torch.equal(weights(fresh)[k], v), k


def test_keep_last(tmp_path):
    model = tiny_model()
    for step in range(1, 5):
        _save(tmp_path, step, model, keep_last=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step_00000003", "step_00000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000004"


def test_checkpoint_is_a_hugging_face_folder(tmp_path):
    from llm_course.models import AutoModelForCausalLM

    model = tiny_model()
    path = _save(tmp_path, 1, model)
    loaded = AutoModelForCausalLM.from_pretrained(path / "model")
    x = torch.randint(0, 96, (1, 8))
    torch.testing.assert_close(loaded(x), model(x))


# --- divergence ---------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss_that_explodes(model, x, y):
        calls["n"] += 1
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        return loss * float("nan") if calls["n"] == 3 else loss

    r = run(tmp_path, max_steps=5, save_every=1, loss_fn=loss_that_explodes)
    assert r.stopped == "nan" and "step 3" in r.message and "loss is nan" in r.message
    assert len(r.history) == 2
    good = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert good.name == "step_00000002" and str(good) in r.message
    fresh = tiny_model(seed=7)
    ckpt.load_checkpoint(good, model=fresh)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


# --- the command --------------------------------------------------------------------------------


def test_pretrain_command_bad_key(tmp_path, capsys):
    from llm_course.cli import main

    f = tmp_path / "bad.yaml"
    f.write_text("model_config_path: gpt2-tiny\ndata: {type: local, path: x}\nmax_steps: 3\nwarmup: 3\n")
    assert main(["pretrain", "--config", str(f)]) == 2
    assert "unknown key 'warmup'" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_command_end_to_end_on_the_sample(tmp_path, monkeypatch, capsys):
    """The real pieces together: the sample corpus, the course tokenizer and loss, gpt2-tiny."""
    from llm_course.cli import main

    monkeypatch.setenv("LLM_COURSE_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    args = ["pretrain", "--config", "gpt2-tiny-cpu", "--set", "max_steps=3", "--set", "block_size=32",
            "--set", "batch_size=2", "--set", "eval_batches=1", "--set", "log_every=1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "step 3/3" in out and "unigram baseline" in out
    assert (tmp_path / "gpt2-tiny-cpu" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert main(args[:3] + ["--set", "max_steps=4"] + args[5:]) == 0  # resumes at step 3, runs step 4
    assert "resumed from" in capsys.readouterr().out
