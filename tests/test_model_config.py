"""Model configs: the shipped YAML files, the errors of bad ones, and the round trip through transformers' configs.

The reference for the Hugging Face names is transformers itself: its ``GPT2Config`` and
``Qwen2Config`` objects, built in this process (nothing is downloaded).
"""

from __future__ import annotations

import json

import pytest
import yaml

from llm_course import paths
from llm_course.models.config import (
    GPT2Config,
    Qwen2Config,
    available_configs,
    config_from_hf,
    load_model_config,
    model_configs_dir,
)

transformers = pytest.importorskip("transformers")

SHIPPED = ["gpt2-124m", "gpt2-tiny", "qwen2-0.5b", "qwen2-7b", "qwen2-tiny"]


def _course_vocab_size() -> int:
    tok = json.loads((paths.configs_dir() / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    return max(max(tok["model"]["vocab"].values()), *(t["id"] for t in tok["added_tokens"])) + 1


# --- the shipped files ----------------------------------------------------------------------------


def test_every_shipped_config_loads_and_is_documented():
    assert set(SHIPPED) <= set(available_configs())
    for name in available_configs():
        path = model_configs_dir() / f"{name}.yaml"
        text = path.read_text(encoding="utf-8")
        assert text.startswith("#"), f"{path.name} must start with a comment saying what it is"
        raw = yaml.safe_load(text)
        assert raw["family"] in ("gpt2", "qwen2")
        cfg = load_model_config(name)
        assert cfg.family == raw["family"] and cfg.to_dict() == {**cfg.to_dict(), **raw}


def test_shipped_sizes():
    vocab = _course_vocab_size()
    tiny = load_model_config("gpt2-tiny")
    assert (tiny.vocab_size, tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.head_dim) == (vocab, 2, 4, 64, 16)
    g = load_model_config("gpt2-124m")
    assert (g.vocab_size, g.block_size, g.n_layer, g.n_head, g.n_embd, g.intermediate_size) == (50257, 1024, 12, 12, 768, 3072)
    q = load_model_config("qwen2-tiny")
    assert (q.vocab_size, q.n_layer, q.n_head, q.num_kv_heads, q.n_embd, q.tie_word_embeddings) == (vocab, 2, 4, 2, 64, True)
    q = load_model_config("qwen2-0.5b")
    assert (q.n_layer, q.n_embd, q.n_head, q.num_kv_heads, q.head_dim, q.intermediate_size, q.vocab_size) == (
        24, 896, 14, 2, 64, 4864, 151936)
    assert q.rope_base == 1e6 and q.tie_word_embeddings and q.block_size == 32768
    assert all(q.layer_window(i) is None for i in range(q.n_layer))
    q = load_model_config("qwen2-7b")
    assert (q.n_layer, q.n_embd, q.n_head, q.num_kv_heads, q.head_dim, q.intermediate_size, q.vocab_size) == (
        28, 3584, 28, 4, 128, 18944, 152064)
    assert not q.tie_word_embeddings and q.rope_base == 1e6


def test_load_by_path_and_yaml_round_trip(tmp_path):
    cfg = load_model_config("qwen2-tiny")
    cfg.to_yaml(tmp_path / "mine.yaml")
    assert load_model_config(tmp_path / "mine.yaml") == cfg
    assert Qwen2Config.from_yaml(tmp_path / "mine.yaml") == cfg
    assert load_model_config(cfg) is cfg


# --- errors that name the key and the file --------------------------------------------------------


def _write(tmp_path, d, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    return path


def _tiny(**over):
    d = dict(family="gpt2", vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=8)
    d.update(over)
    return d


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, _tiny(n_heads=2))
    with pytest.raises(ValueError, match=r"bad\.yaml.*unknown key 'n_heads'"):
        load_model_config(path)
    path = _write(tmp_path, _tiny(head_dim=4), "derived.yaml")
    with pytest.raises(ValueError, match=r"derived\.yaml.*'head_dim'.*derived"):
        load_model_config(path)


def test_missing_key_names_key_and_file(tmp_path):
    d = _tiny()
    del d["n_embd"]
    with pytest.raises(ValueError, match=r"bad\.yaml.*missing key 'n_embd'"):
        load_model_config(_write(tmp_path, d))
    d = _tiny()
    del d["family"]
    with pytest.raises(ValueError, match=r"bad\.yaml.*missing key 'family'"):
        load_model_config(_write(tmp_path, d))


@pytest.mark.parametrize(
    "over, key",
    [
        (dict(n_embd=10, n_head=3), "n_embd"),
        (dict(n_layer=0), "n_layer"),
        (dict(layer_norm_eps=-1.0), "layer_norm_eps"),
        (dict(attn_pdrop=1.5), "attn_pdrop"),
        (dict(family="qwen2", intermediate_size=32, num_kv_heads=3, n_head=4), "num_kv_heads"),
        (dict(family="qwen2"), "intermediate_size"),  # neither intermediate_size nor ffn_multiplier
        (dict(family="qwen2", intermediate_size=32, ffn_multiplier=2.0), "intermediate_size"),  # 2.0 * 8 = 16
        (dict(family="qwen2", intermediate_size=32, use_sliding_window=True), "sliding_window"),
        (dict(family="qwen2", intermediate_size=32, layer_types=["full_attention"] * 3), "layer_types"),
        (dict(family="qwen2", intermediate_size=32, rope_base=1.0), "rope_base"),
        (dict(family="qwen2", intermediate_size=32, rope_scaling={"rope_type": "mrope", "factor": 2.0}), "rope_scaling"),
        (dict(family="qwen2", intermediate_size=32, rope_scaling={"rope_type": "linear"}), "rope_scaling"),
        (dict(family="llama"), "family"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path, over, key):
    with pytest.raises(ValueError, match=rf"bad\.yaml.*{key}"):
        load_model_config(_write(tmp_path, _tiny(**over)))


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="gpt2-tiny"):
        load_model_config("gpt2-huge")


def test_ffn_multiplier_and_head_dim():
    cfg = Qwen2Config(vocab_size=32, block_size=8, n_layer=1, n_head=4, n_embd=32, ffn_multiplier=2.75, head_dim=16)
    assert cfg.intermediate_size == 88 and cfg.head_dim == 16 and cfg.num_kv_heads == 4
    assert "intermediate_size" not in cfg.to_dict() and Qwen2Config.from_dict(cfg.to_dict()) == cfg


# --- Hugging Face configs, both ways --------------------------------------------------------------


def _hf(d: dict):
    return transformers.AutoConfig.for_model(**d)


@pytest.mark.parametrize("name", SHIPPED)
def test_to_hf_config_is_read_by_transformers_as_the_same_architecture(name, tmp_path):
    cfg = load_model_config(name)
    hf = _hf(cfg.to_hf_config())
    if cfg.family == "gpt2":
        assert isinstance(hf, transformers.GPT2Config)
        assert (hf.vocab_size, hf.n_positions, hf.n_layer, hf.n_head, hf.n_embd) == (
            cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd)
        assert hf.layer_norm_epsilon == cfg.layer_norm_eps and hf.activation_function in ("gelu_new", "gelu_pytorch_tanh")
    else:
        assert isinstance(hf, transformers.Qwen2Config)
        assert (hf.vocab_size, hf.max_position_embeddings, hf.num_hidden_layers, hf.num_attention_heads,
                hf.num_key_value_heads, hf.hidden_size, hf.intermediate_size) == (
            cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.num_kv_heads, cfg.n_embd,
            cfg.intermediate_size)  # fmt: skip
        assert hf.rope_parameters["rope_theta"] == cfg.rope_base and hf.rms_norm_eps == cfg.rms_norm_eps
        assert hf.hidden_act == "silu"
    assert hf.tie_word_embeddings == cfg.tie_word_embeddings
    # and back, from transformers' own dict and from a config.json it writes
    assert config_from_hf(hf.to_dict()) == cfg
    hf.save_pretrained(tmp_path)
    assert load_model_config(tmp_path) == cfg


def test_from_transformers_gpt2_config():
    hf = transformers.GPT2Config(vocab_size=99, n_positions=40, n_embd=24, n_layer=3, n_head=6, n_inner=50,
                                 layer_norm_epsilon=1e-6, resid_pdrop=0.2, embd_pdrop=0.05, attn_pdrop=0.3,
                                 tie_word_embeddings=False, activation_function="gelu_pytorch_tanh")  # fmt: skip
    cfg = GPT2Config.from_hf_config(hf.to_dict())
    assert (cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_inner) == (99, 40, 24, 3, 6, 50)
    assert (cfg.layer_norm_eps, cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) == (1e-6, 0.2, 0.05, 0.3)
    assert cfg.intermediate_size == 50 and cfg.head_dim == 4 and not cfg.tie_word_embeddings
    assert (cfg.bos_token_id, cfg.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(use_sliding_window=True, sliding_window=8, max_window_layers=2),
        dict(use_sliding_window=True, sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2),
        dict(use_sliding_window=False, sliding_window=8, max_window_layers=1),
        dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
        dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
        dict(head_dim=32),
    ],
)
def test_from_transformers_qwen2_config(kwargs):
    base = dict(vocab_size=77, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, rope_theta=5e5, rms_norm_eps=1e-5,
                tie_word_embeddings=True)  # fmt: skip
    hf = transformers.Qwen2Config(**{**base, **kwargs})
    cfg = Qwen2Config.from_hf_config(hf.to_dict())
    assert (cfg.vocab_size, cfg.n_embd, cfg.intermediate_size, cfg.n_layer, cfg.n_head, cfg.num_kv_heads) == (
        77, 64, 96, 4, 4, 2)
    assert cfg.block_size == 128 and cfg.rope_base == 5e5 and cfg.rms_norm_eps == 1e-5 and cfg.tie_word_embeddings
    assert cfg.head_dim == kwargs.get("head_dim", 16)
    # the window of each layer, as transformers' Qwen2 decides it (its layer_types and sliding_window)
    hf_windows = [hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]
    assert [cfg.layer_window(i) for i in range(4)] == hf_windows
    scaling = kwargs.get("rope_scaling")
    if scaling is None:
        assert cfg.rope_scaling is None
    else:
        assert cfg.rope_scaling["factor"] == scaling["factor"]
        assert cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")) == scaling.get("rope_type", scaling.get("type"))
    assert config_from_hf(_hf(cfg.to_hf_config()).to_dict()) == config_from_hf(hf.to_dict())


def test_legacy_rope_keys_are_read():
    d = dict(model_type="qwen2", vocab_size=10, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
             num_attention_heads=2, max_position_embeddings=32, rope_theta=1e6, rope_scaling=None)  # fmt: skip
    assert config_from_hf(d).rope_base == 1e6
    d["rope_scaling"] = {"type": "linear", "factor": 2.0}
    assert config_from_hf(d).rope_scaling == {"type": "linear", "factor": 2.0}


def _json(tmp_path, d):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "family, key, value",
    [
        ("gpt2", "activation_function", "relu"),
        ("gpt2", "scale_attn_by_inverse_layer_idx", True),
        ("gpt2", "add_cross_attention", True),
        ("qwen2", "hidden_act", "gelu"),
        ("qwen2", "quantization_config", {"quant_method": "gptq"}),
        ("qwen2", "model_type", "llama"),
        ("qwen2", "attention_bias", False),
        ("qwen2", "partial_rotary_factor", 0.5),
    ],
)
def test_unsupported_hf_keys_name_key_and_file(tmp_path, family, key, value):
    tiny = load_model_config(f"{family}-tiny").to_hf_config()
    path = _json(tmp_path, {**tiny, key: value})
    with pytest.raises(ValueError, match=rf"config\.json.*({key}|model_type)"):
        load_model_config(tmp_path)
    with pytest.raises(ValueError, match=key if key != "model_type" else "llama"):
        (GPT2Config if family == "gpt2" else Qwen2Config).from_hf_config(path)


def test_metadata_keys_are_ignored(tmp_path):
    d = {**load_model_config("gpt2-tiny").to_hf_config(), "torch_dtype": "bfloat16", "use_cache": True,
         "task_specific_params": {"text-generation": {}}, "summary_type": "cls_index", "n_ctx": 128}  # fmt: skip
    assert load_model_config(_json(tmp_path, d)) == load_model_config("gpt2-tiny")
