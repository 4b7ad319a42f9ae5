"""``llm-course sft`` (llm_course.training.sft) end to end on the CPU, ``init_from`` and the exported model folder."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from llm_course.training.config import TrainConfig, load_train_config


def chat_file(path, n: int = 64) -> str:
    """n short chats with an answer a model can learn quickly (the same reply for every prompt of a kind)."""
    recs = []
    for k in range(n):
        word = ["red", "green", "blue", "gold"][k % 4]
        recs.append({"messages": [{"role": "user", "content": f"Color {k}?"}, {"role": "assistant", "content": word}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return str(path)


def sft_config(tmp_path, **over) -> TrainConfig:
    d = dict(model_config_path="qwen2-tiny", data={"type": "chat", "path": chat_file(tmp_path / "chat.jsonl"),
             "packing": True, "val_fraction": 0.1}, max_steps=15, batch_size=4, block_size=48,
             optimizer={"lr": 1e-2, "weight_decay": 0.0}, schedule={"warmup_steps": 2, "min_lr": 1e-3},
             eval_batches=2, log_every=5, out_dir=str(tmp_path / "run"), device="cpu", seed=0)  # fmt: skip
    d.update(over)
    return TrainConfig.from_dict(d)


def _weights(model) -> dict:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny SFT run from random weights (shared by the tests that read its output)."""
    from llm_course.training.sft import train_sft

    tmp = tmp_path_factory.mktemp("sft")
    result = train_sft(sft_config(tmp), resume=False, print_fn=lambda *a, **k: None)
    return tmp, result


def test_sft_lowers_the_assistant_loss_and_exports_a_model(finished_run):
    from llm_course.generation.generate import generate
    from llm_course.generation.loading import load_for_generation
    from llm_course.models.hf_weights import load_pretrained

    tmp, result = finished_run
    assert result.stopped == "done"
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 15 and sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    assert result.val_loss < result.unigram_loss
    folder = result.model_dir
    assert folder == result.out_dir / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json"} <= names  # fmt: skip
    ckpt_model = load_pretrained(result.last_checkpoint / "model")
    loaded = load_for_generation(str(folder), dtype=torch.float32)
    assert not loaded.random_weights and 2 in loaded.eos_token_id, "<|im_end|> ends a reply"
    for k, v in _weights(ckpt_model).items():
        assert torch.equal(_weights(loaded.model)[k], v), k
    prompt = loaded.tokenizer.encode(loaded.tokenizer.apply_chat_template([{"role": "user", "content": "Color 3?"}]))
    ids = torch.tensor([prompt])
    out = generate(loaded.model, ids, torch.ones_like(ids), max_new_tokens=4, eos_token_id=loaded.eos_token_id)
    assert out.shape[1] > ids.shape[1]


def test_init_from_a_saved_folder_and_a_checkpoint(finished_run, tmp_path):
    from llm_course.training.export import load_init_model, resolve_model_folder, save_model_folder
    from llm_course.training.sft import build_start_model, train_sft

    tmp, first = finished_run
    for source in (first.model_dir, first.last_checkpoint, first.out_dir, first.out_dir / "checkpoints"):
        model = build_start_model(sft_config(tmp_path, init_from=str(source)))
        assert model.training and next(model.parameters()).dtype == torch.float32
        assert all(torch.equal(a, b) for a, b in zip(_weights(model).values(), _weights(load_init_model(first.model_dir)).values()))
    with pytest.raises(FileNotFoundError, match="init_from .*not a model folder"):
        resolve_model_folder(tmp_path)
    # a bf16 folder (as models/course-lm is shipped): training runs in fp32, the export is bf16 again
    bf16 = save_model_folder(load_init_model(first.model_dir), tmp_path / "bf16", dtype=torch.bfloat16)
    cfg = sft_config(tmp_path, init_from=str(bf16), max_steps=2, optimizer={"lr": 1e-5}, schedule={})
    cfg_dict = cfg.to_dict()
    del cfg_dict["model_config_path"]  # optional with init_from: the architecture is the folder's
    cfg = TrainConfig.from_dict(cfg_dict)
    assert cfg.model_config_path == str(bf16)
    second = train_sft(cfg, resume=False, print_fn=lambda *a, **k: None)
    assert second.history[0]["loss"] < 0.6 * first.history[0]["loss"], "starts where the first run ended, not from random"
    assert json.loads((second.model_dir / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_runs_resumes_and_reports_bad_input(tmp_path, capsys):
    from llm_course.training.sft import main

    cfg = sft_config(tmp_path, max_steps=3, save_every=3).to_dict()
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["--config", str(path)]) == 0
    assert main(["--config", str(path), "--set", "max_steps=4"]) == 0  # resumes from step 3
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 4/4" in out and "saved the fine-tuned model" in out
    assert main(["--config", str(path), "--set", "max_stepz=4"]) == 2
    assert "unknown key 'max_stepz'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    assert main(["--config", str(path), "--no-resume", "--set", f"data={{type: chat, path: {bad}}}"]) == 2
    assert f"{bad}:1: no assistant message" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sft-tiny-cpu", "sft-course-lm"])
def test_shipped_sft_configs_load(name):
    cfg = load_train_config(name)
    assert cfg.data["type"] == "chat" and cfg.max_steps > 0
    assert (cfg.init_from is None) == (name == "sft-tiny-cpu")
    if cfg.init_from:
        assert cfg.model_config_path == cfg.init_from


def test_init_from_config_checks(tmp_path):
    base = sft_config(tmp_path).to_dict()
    with pytest.raises(ValueError, match="init_from=3 must be"):
        TrainConfig.from_dict({**base, "init_from": 3})
    with pytest.raises(ValueError, match="unknown key 'init_frm'"):
        TrainConfig.from_dict({**base, "init_frm": "x"})
    no_arch = {k: v for k, v in base.items() if k != "model_config_path"}
    with pytest.raises(ValueError, match="missing key 'model_config_path'"):
        TrainConfig.from_dict(no_arch)


def test_sample_sft_file_is_what_the_script_writes():
    import importlib.util

    from llm_course import paths

    root = paths.repo_root()
    spec = importlib.util.spec_from_file_location("make_sample_sft", root / "scripts" / "make_sample_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = (root / "data" / "sample_sft.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == module.sample_records()
    assert (root / "data" / "sample_sft.jsonl").stat().st_size < 50_000


# --- the graded exercise sft_labels names each usual mistake (as tests/test_known_mistakes.py does) ----------
SFT_MASK_MISTAKES = [
    ('        on = kind == "assistant" or (kind == "end" and previous == "assistant")\n', "        on = True\n",
     r"^every token is trained, the prompt too"),
    ('    for piece, kind in zip(pieces, kinds):\n        on = kind == "assistant" or (kind == "end" and previous == "assistant")\n',
     '    for i, (piece, kind) in enumerate(zip(pieces, kinds)):\n        on = kind == "assistant" or (kind == "end" and '
     'previous == "assistant") or (kind == "template" and kinds[i + 1 : i + 2] == ["assistant"])\n',
     r"^the reply's header \(<\|im_start\|>assistant\\n\) is trained"),
    ('on = kind == "assistant" or (kind == "end" and previous == "assistant")', 'on = kind == "assistant"',
     r"^the <\|im_end\|> after a reply is not trained"),
    ('on = kind == "assistant" or (kind == "end" and previous == "assistant")', 'on = kind in ("assistant", "end")',
     r"^every <\|im_end\|> is trained"),
    ("torch.where(flags[1:], row[1:]", "torch.where(flags[:-1], row[1:]", r"^the mask is one position late at the turn boundary"),
    ("labels = torch.where(flags[1:], row[1:], torch.full_like(row[1:], IGNORE_INDEX))",
     "labels = torch.where(torch.cat([flags[2:], flags[:1] & False]), row[1:], torch.full_like(row[1:], IGNORE_INDEX))",
     r"^the mask is one position early"),
    ("torch.where(flags[1:], row[1:], torch.full_like(row[1:], IGNORE_INDEX))",
     "torch.where(flags[:-1], row[:-1], torch.full_like(row[1:], IGNORE_INDEX))", r"^the labels are not shifted"),
    ("trained + [False] * n_pad", "trained + [True] * n_pad", r"^the padding is trained"),
]  # fmt: skip


@pytest.mark.parametrize("old,new,message", SFT_MASK_MISTAKES, ids=[m[2][1:30] for m in SFT_MASK_MISTAKES])
def test_graded_sft_mask_names_the_mistake(tmp_path, old, new, message):
    import importlib.util
    from types import SimpleNamespace

    from llm_course import paths
    from llm_course.grading.adapter import load

    root = paths.repo_root()
    source = (root / "solutions" / "stage5_finetune" / "sft_mask.py").read_text(encoding="utf-8")
    assert old in source, f"solutions/stage5_finetune/sft_mask.py no longer contains {old!r}: update this test"
    (tmp_path / "stage5_finetune").mkdir()
    (tmp_path / "stage5_finetune" / "sft_mask.py").write_text(source.replace(old, new), encoding="utf-8")
    impl = SimpleNamespace(load=lambda topic: load(topic, tmp_path))
    spec = importlib.util.spec_from_file_location("_graded_sft_mask", root / "tests" / "exercises" / "test_stage5_1_sft_mask.py")
    graded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graded)
    with pytest.raises(AssertionError, match=message):
        graded.test_the_docstring_example(impl)
    with pytest.raises(AssertionError, match=message):
        graded.test_a_real_chat_with_the_course_tokenizer(impl)
