"""Hugging Face checkpoints (llm_course/models/hf_weights.py): save, load, name maps, errors.

Every test builds a tiny random model; nothing is downloaded. Parity with ``transformers``
itself (logits, generation, both directions) is in test_hf_parity.py.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_course.models import hf_weights
from llm_course.models.config import GPT2Config, Qwen2Config
from llm_course.models.hf_weights import (
    CheckpointMismatchError,
    build_model,
    course_to_hf,
    hf_to_course,
    load_pretrained,
    parse_size,
    save_pretrained,
)


def gpt2_config(**kw):
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=24)
    return GPT2Config(**{**base, **kw})


def qwen2_config(**kw):
    base = dict(vocab_size=41, block_size=32, n_layer=2, n_head=4, n_embd=32, num_kv_heads=2, intermediate_size=40)
    return Qwen2Config(**{**base, **kw})


CONFIGS = {
    "gpt2-tied": lambda: gpt2_config(),
    "gpt2-untied": lambda: gpt2_config(tie_word_embeddings=False),
    "qwen2-tied": lambda: qwen2_config(tie_word_embeddings=True),
    "qwen2-untied": lambda: qwen2_config(tie_word_embeddings=False),
}


def random_model(config, seed=0):
    """The course's model with every parameter random (norm weights and biases too: a swap would show)."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def ids(config, B=2, T=7, seed=1):
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def file_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_save_then_load_gives_the_same_model(name, tmp_path):
    model = random_model(CONFIGS[name]())
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert_same_weights(model, loaded)
    x = ids(model.config)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    emb_name = "transformer.wte.weight" if model.config.family == "gpt2" else "model.embed_tokens.weight"
    tied = loaded.lm_head.weight is loaded.get_parameter(emb_name)
    assert tied == model.config.tie_word_embeddings, "a tied head is one Parameter with the embedding, an untied one not"
    assert not loaded.training


def test_gpt2_file_has_hf_names_and_conv1d_layout(tmp_path):
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    saved = file_tensors(tmp_path / "model.safetensors")
    C = model.config.n_embd
    assert "lm_head.weight" not in saved, "a tied head is saved once, as the embedding"
    assert saved["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)  # Conv1D: (in, out)
    assert saved["transformer.h.1.mlp.c_fc.weight"].shape == (C, 4 * C)
    assert saved["transformer.h.1.mlp.c_proj.weight"].shape == (4 * C, C)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        w = model.get_parameter(f"transformer.h.0.{name}.weight")
        torch.testing.assert_close(saved[f"transformer.h.0.{name}.weight"], w.t(), rtol=0, atol=0)
        torch.testing.assert_close(saved[f"transformer.h.0.{name}.bias"], model.get_parameter(f"transformer.h.0.{name}.bias"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["dtype"] == "float32"
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_untied_head_is_saved(tmp_path):
    model = random_model(qwen2_config(tie_word_embeddings=False))
    save_pretrained(model, tmp_path)
    saved = file_tensors(tmp_path / "model.safetensors")
    torch.testing.assert_close(saved["lm_head.weight"], model.lm_head.weight, rtol=0, atol=0)
    assert set(saved) == set(model.state_dict())


def test_a_tied_config_with_a_different_head_is_refused(tmp_path):
    model = random_model(qwen2_config(tie_word_embeddings=True))
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + 1)  # untied by hand
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        save_pretrained(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- the name maps --------------------------------------------------------------------------------


def hf_gpt2_state(config, prefix="transformer.", seed=0):
    """A GPT-2 state dict as transformers/OpenAI store it: Conv1D weights (in, out)."""
    g = torch.Generator().manual_seed(seed)
    C, F, V, P = config.n_embd, config.intermediate_size, config.vocab_size, config.block_size
    sd = {f"{prefix}wte.weight": torch.randn(V, C, generator=g), f"{prefix}wpe.weight": torch.randn(P, C, generator=g)}
    for i in range(config.n_layer):
        h = f"{prefix}h.{i}."
        shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
                  "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
                  "mlp.c_fc.weight": (C, F), "mlp.c_fc.bias": (F,), "mlp.c_proj.weight": (F, C), "mlp.c_proj.bias": (C,)}  # fmt: skip
        sd.update({h + k: torch.randn(*s, generator=g) for k, s in shapes.items()})
    sd[f"{prefix}ln_f.weight"], sd[f"{prefix}ln_f.bias"] = torch.randn(C, generator=g), torch.randn(C, generator=g)
    return sd


def test_gpt2_map_transposes_conv1d_and_drops_buffers():
    config = gpt2_config()
    sd = hf_gpt2_state(config)
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16)  # causal-mask buffers of old checkpoints
    sd["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    before = {k: v.clone() for k, v in sd.items()}
    out = hf_to_course("gpt2", sd, config)
    assert set(out) == set(before) - {"transformer.h.0.attn.bias", "transformer.h.0.attn.masked_bias"}
    for k, v in out.items():
        conv1d = k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        torch.testing.assert_close(v, before[k].t() if conv1d else before[k], rtol=0, atol=0, msg=k)
    assert out["transformer.h.0.attn.c_attn.bias"].shape == (3 * config.n_embd,), "c_attn.bias is a weight, kept"
    for k in before:  # pure: the input is untouched
        torch.testing.assert_close(sd[k], before[k], rtol=0, atol=0)
    back = course_to_hf("gpt2", out, config)
    assert set(back) == set(out)
    for k in back:
        torch.testing.assert_close(back[k], before[k], rtol=0, atol=0, msg=k)


def test_gpt2_map_reads_the_key_style_without_prefix():
    config = gpt2_config()
    bare = hf_gpt2_state(config, prefix="")
    prefixed = hf_gpt2_state(config, prefix="transformer.")
    a, b = hf_to_course("gpt2", bare, config), hf_to_course("gpt2", prefixed, config)
    assert a.keys() == b.keys() and all(k.startswith("transformer.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_tied_head_in_a_checkpoint_is_ignored_untied_is_kept():
    tied, untied = gpt2_config(), gpt2_config(tie_word_embeddings=False)
    sd = hf_gpt2_state(tied)
    sd["lm_head.weight"] = torch.randn(tied.vocab_size, tied.n_embd)
    assert "lm_head.weight" not in hf_to_course("gpt2", sd, tied)
    assert "lm_head.weight" in hf_to_course("gpt2", sd, untied)
    q = qwen2_config(tie_word_embeddings=True)
    qsd = {"model.embed_tokens.weight": torch.zeros(2), "lm_head.weight": torch.zeros(2),
           "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(2)}  # fmt: skip
    assert set(hf_to_course("qwen2", qsd, q)) == {"model.embed_tokens.weight"}
    assert set(course_to_hf("qwen2", {"model.embed_tokens.weight": torch.zeros(2), "lm_head.weight": torch.zeros(2)}, q)) == {
        "model.embed_tokens.weight"
    }


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="llama"):
        hf_to_course("llama", {}, gpt2_config())


def test_load_a_gpt2_folder_in_the_old_key_style(tmp_path):
    """openai-community/gpt2's layout: no prefix, mask buffers, no lm_head, no dtype in config.json."""
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    saved = file_tensors(tmp_path / "model.safetensors")
    old = {k.removeprefix("transformer."): v for k, v in saved.items()}
    for i in range(model.config.n_layer):
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(old, str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    del config["dtype"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained(tmp_path)
    assert_same_weights(model, loaded)


# --- sharding -------------------------------------------------------------------------------------


def test_sharded_save_and_load(tmp_path):
    model = random_model(qwen2_config(tie_word_embeddings=False))
    save_pretrained(model, tmp_path, max_shard_size="4KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 3 and not (tmp_path / "model.safetensors").exists()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict()) and set(index["weight_map"].values()) == set(shards)
    state = model.state_dict()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for shard in shards:  # each at most 4000 bytes unless it holds a single larger tensor
        tensors = file_tensors(tmp_path / shard)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= 4000 or len(tensors) == 1, shard
        for k, t in tensors.items():
            assert index["weight_map"][k] == shard
    assert_same_weights(model, load_pretrained(tmp_path))


def test_resaving_replaces_old_weights_and_keeps_other_files(tmp_path):
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path, max_shard_size=2000)
    (tmp_path / "tokenizer.json").write_text("{}")
    save_pretrained(model, tmp_path)  # now a single file: the old shards and index must go
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json"]
    assert_same_weights(model, load_pretrained(tmp_path))


@pytest.mark.parametrize("text, size", [("50KB", 50_000), ("2GiB", 2 * 2**30), ("1.5MB", 1_500_000), (123, 123), ("7", 7)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "5XB", "-3", 0, "KB"])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(bad)


# --- what loading refuses --------------------------------------------------------------------------


def test_mismatch_lists_every_key_with_shapes(tmp_path):
    model = random_model(qwen2_config())
    save_pretrained(model, tmp_path)
    sd = file_tensors(tmp_path / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]  # missing (40, 32)
    sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(12, 32)  # wrong shape: expected (16, 32)
    sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(3, 5)  # unexpected
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    assert "3 problems" in message and str(tmp_path / "model.safetensors") in message
    assert "missing     model.layers.1.mlp.up_proj.weight: expected shape [40, 32]" in message
    assert "wrong shape model.layers.0.self_attn.k_proj.weight: expected [16, 32], found [12, 32]" in message
    assert "unexpected  model.layers.0.self_attn.extra.weight: shape [3, 5]" in message


def test_gpt2_mismatch_names_course_layout(tmp_path):
    """A GPT-2 Conv1D weight saved without the transpose: reported in the course's (out, in) terms."""
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    sd = file_tensors(tmp_path / "model.safetensors")
    sd["transformer.h.0.mlp.c_fc.weight"] = sd["transformer.h.0.mlp.c_fc.weight"].t().contiguous()
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight: expected \[96, 24\], found \[24, 96\]"):
        load_pretrained(tmp_path)


def test_a_weight_under_both_key_styles_is_an_error(tmp_path):
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    sd = file_tensors(tmp_path / "model.safetensors")
    sd["h.0.ln_1.weight"] = sd["transformer.h.0.ln_1.weight"].clone()  # the same weight twice
    sd["h.1.attn.c_proj.weight"] = sd.pop("transformer.h.1.attn.c_proj.weight")[:, :-1].contiguous()  # old style, wrong
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    twice = [line for line in message.splitlines() if line.startswith("  twice       transformer.h.0.ln_1.weight: as ")]
    assert len(twice) == 1 and "as h.0.ln_1.weight" in twice[0] and "as transformer.h.0.ln_1.weight" in twice[0]
    assert ("wrong shape transformer.h.1.attn.c_proj.weight (in the checkpoint: h.1.attn.c_proj.weight): "
            "expected [24, 24], found [23, 24]") in message  # fmt: skip


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_pretrained(tmp_path)
    save_pretrained(model, tmp_path, max_shard_size=3000)
    next(tmp_path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of"):
        load_pretrained(tmp_path)


# --- pytorch_model.bin ---------------------------------------------------------------------------


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    sd = file_tensors(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    assert_same_weights(model, load_pretrained(tmp_path))


class _RunsCode:
    def __reduce__(self):
        return (os.makedirs, (os.environ["HF_WEIGHTS_TEST_MARKER"],))


def test_pytorch_model_bin_never_runs_code(tmp_path, monkeypatch):
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("HF_WEIGHTS_TEST_MARKER", str(marker))
    torch.save({"transformer.wte.weight": torch.zeros(2), "payload": _RunsCode()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):
        load_pretrained(tmp_path)
    assert not marker.exists()


# --- dtype -----------------------------------------------------------------------------------------


def test_dtype_at_load(tmp_path):
    model = random_model(qwen2_config())
    save_pretrained(model, tmp_path, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in file_tensors(tmp_path / "model.safetensors").values())
    default = load_pretrained(tmp_path)  # the checkpoint's dtype
    assert {p.dtype for p in default.parameters()} == {torch.bfloat16}
    as_fp32 = load_pretrained(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(as_fp32.state_dict()[k], v.to(torch.bfloat16).float(), rtol=0, atol=0, msg=k)
    assert {p.dtype for p in load_pretrained(tmp_path, dtype="float16").parameters()} == {torch.float16}
    with pytest.raises(ValueError, match="dtype"):
        load_pretrained(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        load_pretrained(tmp_path, dtype="floaty")


def test_config_without_dtype_loads_float32_and_torch_dtype_is_read(tmp_path):
    model = random_model(gpt2_config())
    save_pretrained(model, tmp_path, dtype="float16")
    config = json.loads((tmp_path / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")  # how configs before transformers 5 say it
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert {p.dtype for p in load_pretrained(tmp_path).parameters()} == {torch.float16}
    del config["torch_dtype"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert {p.dtype for p in load_pretrained(tmp_path).parameters()} == {torch.float32}


# --- atomic save -----------------------------------------------------------------------------------


def _fail_midway(monkeypatch):
    calls = []
    real = hf_weights.save_file

    def failing(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(hf_weights, "save_file", failing)
    return calls


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model = random_model(gpt2_config())
    calls = _fail_midway(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, tmp_path / "out", max_shard_size=3000)
    assert len(calls) == 2, "the first shard was written before the failure"
    assert list(tmp_path.iterdir()) == [], "no partial folder, no temporary folder"


def test_a_failed_save_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    old = random_model(gpt2_config(), seed=1)
    save_pretrained(old, tmp_path / "out")
    (tmp_path / "out" / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    _fail_midway(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(random_model(gpt2_config(), seed=2), tmp_path / "out", max_shard_size=3000)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
