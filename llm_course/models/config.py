"""Model configs: plain dataclasses that say what to build, read from YAML or a Hugging Face config.json.

Two families, one class each:

* :class:`GPT2Config`: GPT-2 (learned positions, LayerNorm, GELU MLP, multi-head attention).
* :class:`Qwen2Config`: Qwen2 (RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, an
  optional sliding window on some layers).

The field names are the course's short ones (``n_layer``, ``n_head``, ``n_embd``,
``block_size``); Hugging Face's names (``num_hidden_layers``, ``hidden_size``,
``max_position_embeddings``, ...) appear only in :meth:`from_hf_config` and
:meth:`to_hf_config`, which translate a ``config.json`` both ways::

    cfg = load_model_config("gpt2-tiny")            # configs/model/gpt2-tiny.yaml
    cfg = load_model_config("my_model.yaml")        # any YAML file
    cfg = load_model_config("checkpoints/qwen2")    # a folder with an HF config.json
    cfg.to_hf_config()                              # the dict transformers reads back

Some fields are *derived* in ``__post_init__`` (``head_dim``, ``intermediate_size``); they
are not keys of a YAML file. Every check raises a ``ValueError`` that names the key,
and, for a file, the file: a config with a typo fails when it is read, not halfway
through building a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from llm_course import paths
from llm_course.models.components.embeddings.rotary import check_rope_arguments

FAMILIES = ("gpt2", "qwen2")

# config.json keys of other families that would change the architecture: refused unless at
# their neutral value. Every other key the course does not read (torch_dtype, use_cache,
# architectures, ...) only describes the checkpoint and is ignored.
_FOREIGN_KEYS = {
    "partial_rotary_factor": (1, 1.0), "attn_logit_softcapping": (None,), "final_logit_softcapping": (None,),
    "use_mrope": (False,), "attention_bias": (), "mlp_bias": (), "use_qk_norm": (False,),
}  # fmt: skip


def _fail(cls_name: str, key: str, message: str) -> None:
    raise ValueError(f"{cls_name}: {key}={message}")


def _positive_int(cls_name: str, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        _fail(cls_name, key, f"{value!r} must be a positive integer")


def _number(cls_name: str, key: str, value, *, low: float = 0.0, high: float = math.inf, open_low: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        _fail(cls_name, key, f"{value!r} must be a finite number {'>' if open_low else '>='} {low:g}"
              + (f" and <= {high:g}" if high < math.inf else ""))  # fmt: skip


def _optional_token(cls_name: str, key: str, value) -> None:
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            _fail(cls_name, key, f"{value!r} must be a token id (an integer >= 0), a list of them, or null")


class _ModelConfig:
    """What both families share: reading YAML files and HF config.json files."""

    family: ClassVar[str]
    model_type: ClassVar[str]  # HF's name for the family
    architecture: ClassVar[str]  # HF's class of the language model
    _hf_names: ClassVar[dict[str, str]]  # HF key -> course field, for the keys that only change name

    @classmethod
    def keys(cls) -> list[str]:
        """The keys a YAML file may hold (the fields that are not derived), ``family`` first."""
        return ["family"] + [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def required_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict, source: str = "the config"):
        """Build from a dict of course keys (a parsed YAML file); errors name the key and ``source``."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a model config must be a mapping of keys to values, got {type(d).__name__}")
        d = dict(d)
        family = d.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(f"{source}: family={family!r}, but this is a {cls.__name__} (family {cls.family!r})")
        allowed = cls.keys()
        for key in d:
            if key not in allowed:
                derived = {f.name for f in dataclasses.fields(cls) if not f.init}
                why = "it is derived from the other keys" if key in derived else f"the keys are {', '.join(allowed)}"
                raise ValueError(f"{source}: unknown key {key!r} for a {cls.family} model config ({why})")
        for key in cls.required_keys():
            if key not in d:
                raise ValueError(f"{source}: missing key {key!r} (a {cls.family} model config needs "
                                 f"{', '.join(cls.required_keys())})")  # fmt: skip
        try:
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path):
        """Read a YAML file of course keys (see configs/model/*.yaml)."""
        path = Path(path)
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
        return cls.from_dict(d if d is not None else {}, source=str(path))

    def to_dict(self) -> dict:
        """The YAML keys and values (``family`` first, derived fields left out)."""
        d = {"family": self.family}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init})
        return d

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @classmethod
    def _from_hf_dict(cls, d: dict, source: str) -> dict:
        """Course keys from an HF dict: rename, check what must hold, drop metadata. Returns the kwargs."""
        raise NotImplementedError

    @classmethod
    def from_hf_config(cls, config: dict | str | Path):
        """Build from a Hugging Face config: a dict, a config.json file, or a folder holding one.

        Keys that only describe the checkpoint (``torch_dtype``, ``architectures``, ...) are
        ignored; a key that would change the architecture in a way the course does not build
        (another activation, cross-attention, quantized weights) is an error naming it.
        """
        d, source = _read_hf(config)
        model_type = d.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"{source}: model_type={model_type!r}, but {cls.__name__} reads {cls.model_type!r} configs")
        if d.get("quantization_config") is not None:
            raise ValueError(f"{source}: quantization_config: quantized checkpoints are not supported by the course")
        for key, neutral in _FOREIGN_KEYS.items():
            if key in d and d[key] not in neutral:
                raise ValueError(f"{source}: {key}={d[key]!r} is not a {cls.family} setting the course builds "
                                 f"(is this config of another model family?)")  # fmt: skip
        kwargs = cls._from_hf_dict(d, source)
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None


def _read_hf(config: dict | str | Path) -> tuple[dict, str]:
    if isinstance(config, dict):
        return dict(config), "the HF config"
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no HF config.json at {path}")
    return json.loads(path.read_text(encoding="utf-8")), str(path)


def _must_be(d: dict, key: str, allowed: tuple, source: str, why: str) -> None:
    if key in d and d[key] not in allowed:
        raise ValueError(f"{source}: {key}={d[key]!r} is not supported ({why})")


# --- GPT-2 --------------------------------------------------------------------------------------


@dataclass
class GPT2Config(_ModelConfig):
    """GPT-2: ``n_layer`` blocks of LayerNorm -> attention -> LayerNorm -> MLP, learned positions.

    ``block_size`` is the context length (HF ``n_positions``, the size of the ``wpe`` table);
    ``n_inner`` the MLP width (None: 4 * n_embd, as GPT-2); ``layer_norm_eps`` is HF's
    ``layer_norm_epsilon``. Derived: ``head_dim = n_embd / n_head``, ``intermediate_size``.
    """

    family: ClassVar[str] = "gpt2"
    model_type: ClassVar[str] = "gpt2"
    architecture: ClassVar[str] = "GPT2LMHeadModel"

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_inner: int | None = None
    layer_norm_eps: float = 1e-5
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    head_dim: int = field(init=False)
    intermediate_size: int = field(init=False)

    _hf_names: ClassVar[dict[str, str]] = {
        "vocab_size": "vocab_size", "n_positions": "block_size", "n_layer": "n_layer", "n_head": "n_head",
        "n_embd": "n_embd", "n_inner": "n_inner", "layer_norm_epsilon": "layer_norm_eps", "embd_pdrop": "embd_pdrop",
        "attn_pdrop": "attn_pdrop", "resid_pdrop": "resid_pdrop", "tie_word_embeddings": "tie_word_embeddings",
        "initializer_range": "initializer_range", "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
    }  # fmt: skip

    def __post_init__(self):
        n = type(self).__name__
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _positive_int(n, key, getattr(self, key))
        if self.n_embd % self.n_head != 0:
            _fail(n, "n_embd", f"{self.n_embd} does not divide evenly into n_head={self.n_head} heads")
        if self.n_inner is not None:
            _positive_int(n, "n_inner", self.n_inner)
        _number(n, "layer_norm_eps", self.layer_norm_eps)
        for key in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            _number(n, key, getattr(self, key), high=1.0)
        _number(n, "initializer_range", self.initializer_range)
        if not isinstance(self.tie_word_embeddings, bool):
            _fail(n, "tie_word_embeddings", f"{self.tie_word_embeddings!r} must be true or false")
        _optional_token(n, "bos_token_id", self.bos_token_id)
        _optional_token(n, "eos_token_id", self.eos_token_id)
        self.head_dim = self.n_embd // self.n_head
        self.intermediate_size = self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def _from_hf_dict(cls, d: dict, source: str) -> dict:
        _must_be(d, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), source,
                 "GPT-2 here uses GELU's tanh approximation: gelu_new or gelu_pytorch_tanh")  # fmt: skip
        _must_be(d, "scale_attn_weights", (True,), source, "attention scores are always scaled by 1/sqrt(head_dim)")
        _must_be(d, "scale_attn_by_inverse_layer_idx", (False,), source, "no per-layer scaling of attention")
        _must_be(d, "add_cross_attention", (False,), source, "GPT-2 here is a decoder only")
        if "n_ctx" in d and "n_positions" in d and d["n_ctx"] != d["n_positions"]:
            raise ValueError(f"{source}: n_ctx={d['n_ctx']} differs from n_positions={d['n_positions']}")
        d = dict(d)
        if "n_positions" not in d and "n_ctx" in d:
            d["n_positions"] = d["n_ctx"]
        return {course: d[hf] for hf, course in cls._hf_names.items() if hf in d}

    def to_hf_config(self) -> dict:
        """The config.json of transformers' ``GPT2LMHeadModel`` with this architecture."""
        return {
            "model_type": self.model_type, "architectures": [self.architecture],
            "vocab_size": self.vocab_size, "n_positions": self.block_size, "n_embd": self.n_embd,
            "n_layer": self.n_layer, "n_head": self.n_head, "n_inner": self.n_inner,
            "activation_function": "gelu_new", "layer_norm_epsilon": self.layer_norm_eps,
            "embd_pdrop": self.embd_pdrop, "attn_pdrop": self.attn_pdrop, "resid_pdrop": self.resid_pdrop,
            "initializer_range": self.initializer_range, "scale_attn_weights": True,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        }  # fmt: skip


# --- Qwen2 --------------------------------------------------------------------------------------

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class Qwen2Config(_ModelConfig):
    """Qwen2: ``n_layer`` blocks of RMSNorm -> GQA with RoPE -> RMSNorm -> SwiGLU MLP.

    ``block_size`` is HF's ``max_position_embeddings``; ``num_kv_heads`` the key/value heads
    (None: n_head); the MLP width is ``intermediate_size``, or ``ffn_multiplier * n_embd``
    (give exactly one); ``head_dim`` defaults to n_embd / n_head; ``rope_base`` is HF's
    ``rope_theta``; ``rope_scaling`` HF's dict (see components/embeddings/rotary.py).

    Sliding window, with HF's semantics: when ``use_sliding_window`` is true, the layers with
    index >= ``max_window_layers`` (or those named ``"sliding_attention"`` in ``layer_types``,
    when given) attend only to the last ``sliding_window`` positions. ``layer_window(i)``
    gives layer i's window (None: full causal attention).
    """

    family: ClassVar[str] = "qwen2"
    model_type: ClassVar[str] = "qwen2"
    architecture: ClassVar[str] = "Qwen2ForCausalLM"

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    ffn_multiplier: float | None = None
    head_dim: int | None = None
    rope_base: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = None
    layer_types: list[str] | None = None
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    _hf_names: ClassVar[dict[str, str]] = {
        "vocab_size": "vocab_size", "max_position_embeddings": "block_size", "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head", "hidden_size": "n_embd", "num_key_value_heads": "num_kv_heads",
        "intermediate_size": "intermediate_size", "head_dim": "head_dim", "rms_norm_eps": "rms_norm_eps",
        "tie_word_embeddings": "tie_word_embeddings", "use_sliding_window": "use_sliding_window",
        "sliding_window": "sliding_window", "max_window_layers": "max_window_layers", "layer_types": "layer_types",
        "attention_dropout": "attention_dropout", "initializer_range": "initializer_range",
        "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
    }  # fmt: skip

    def __post_init__(self):
        n = type(self).__name__
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _positive_int(n, key, getattr(self, key))
        if self.num_kv_heads is None:
            self.num_kv_heads = self.n_head
        _positive_int(n, "num_kv_heads", self.num_kv_heads)
        if self.n_head % self.num_kv_heads != 0:
            _fail(n, "num_kv_heads", f"{self.num_kv_heads} does not divide n_head={self.n_head}")
        if self.intermediate_size is None and self.ffn_multiplier is None:
            _fail(n, "intermediate_size", "None and ffn_multiplier=None: give one of the two (the MLP width, "
                  "or it as a multiple of n_embd)")  # fmt: skip
        if self.ffn_multiplier is not None:
            _number(n, "ffn_multiplier", self.ffn_multiplier, open_low=True)
            derived = max(1, round(self.ffn_multiplier * self.n_embd))
            if self.intermediate_size is not None and self.intermediate_size != derived:
                _fail(n, "intermediate_size", f"{self.intermediate_size!r}, but ffn_multiplier={self.ffn_multiplier!r} "
                      f"makes it {derived}: give one of the two")  # fmt: skip
            self.intermediate_size = derived
        _positive_int(n, "intermediate_size", self.intermediate_size)
        if self.head_dim is None:
            if self.n_embd % self.n_head != 0:
                _fail(n, "n_embd", f"{self.n_embd} does not divide evenly into n_head={self.n_head} heads; give head_dim")
            self.head_dim = self.n_embd // self.n_head
        _positive_int(n, "head_dim", self.head_dim)
        if self.head_dim % 2:
            _fail(n, "head_dim", f"{self.head_dim} must be even (RoPE rotates pairs of features)")
        _number(n, "rope_base", self.rope_base, low=1.0, open_low=True)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            _fail(n, "rope_scaling", f"{self.rope_scaling!r} must be a mapping (HF's rope_scaling dict) or null")
        try:  # the rotary tables' own checks: a known scaling type with the keys it needs
            check_rope_arguments(n, self.head_dim, self.rope_base, self.rope_scaling, self.block_size)
        except (ValueError, TypeError) as e:
            _fail(n, "rope_scaling", f"{self.rope_scaling!r}: {str(e).removeprefix(n + ': ')}")
        _number(n, "rms_norm_eps", self.rms_norm_eps)
        for key in ("tie_word_embeddings", "qkv_bias", "use_sliding_window"):
            if not isinstance(getattr(self, key), bool):
                _fail(n, key, f"{getattr(self, key)!r} must be true or false")
        if self.sliding_window is not None:
            _positive_int(n, "sliding_window", self.sliding_window)
        elif self.use_sliding_window:
            _fail(n, "sliding_window", "None, but use_sliding_window is true: give the window's length")
        if self.max_window_layers is None:
            self.max_window_layers = self.n_layer if self.layer_types is None else 0
        if isinstance(self.max_window_layers, bool) or not isinstance(self.max_window_layers, numbers.Integral) \
                or self.max_window_layers < 0:  # fmt: skip
            _fail(n, "max_window_layers", f"{self.max_window_layers!r} must be an integer >= 0")
        if self.layer_types is not None:
            if not isinstance(self.layer_types, list) or len(self.layer_types) != self.n_layer \
                    or any(t not in LAYER_TYPES for t in self.layer_types):  # fmt: skip
                _fail(n, "layer_types", f"{self.layer_types!r} must be a list of n_layer={self.n_layer} entries, "
                      f"each one of {', '.join(LAYER_TYPES)}")  # fmt: skip
        _number(n, "attention_dropout", self.attention_dropout, high=1.0)
        _number(n, "initializer_range", self.initializer_range)
        _optional_token(n, "bos_token_id", self.bos_token_id)
        _optional_token(n, "eos_token_id", self.eos_token_id)

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.ffn_multiplier is not None:
            del d["intermediate_size"]  # derived from ffn_multiplier
        return d

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer ``i`` (None: the layer attends to every earlier position)."""
        if not 0 <= i < self.n_layer:
            raise IndexError(f"Qwen2Config: layer {i} does not exist (n_layer={self.n_layer})")
        if not self.use_sliding_window:
            return None
        if self.layer_types is not None:
            sliding = self.layer_types[i] == "sliding_attention"
        else:
            sliding = i >= self.max_window_layers
        return self.sliding_window if sliding else None

    @classmethod
    def _from_hf_dict(cls, d: dict, source: str) -> dict:
        _must_be(d, "hidden_act", ("silu",), source, "Qwen2's MLP is SwiGLU: silu")
        kwargs = {course: d[hf] for hf, course in cls._hf_names.items() if hf in d}
        # transformers 5 writes rope_parameters {"rope_type", "rope_theta", <scaling keys>};
        # earlier versions rope_theta and rope_scaling (None, or a dict with "type" or "rope_type").
        rope = d.get("rope_parameters")
        if rope is not None:
            rope = dict(rope)
            kwargs["rope_base"] = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
            kind = rope.get("rope_type", rope.get("type", "default"))
            kwargs["rope_scaling"] = None if kind == "default" else rope
        else:
            if "rope_theta" in d:
                kwargs["rope_base"] = d["rope_theta"]
            scaling = d.get("rope_scaling")
            if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) != "default":
                kwargs["rope_scaling"] = dict(scaling)
        # transformers 5 always writes layer_types; keep it only when it says more than max_window_layers
        layer_types = kwargs.get("layer_types")
        if layer_types is not None and "max_window_layers" in kwargs:
            window = kwargs.get("sliding_window") if kwargs.get("use_sliding_window") else None
            implied = ["sliding_attention" if window is not None and i >= kwargs["max_window_layers"] else "full_attention"
                       for i in range(len(layer_types))]  # fmt: skip
            if list(layer_types) == implied or window is None:
                del kwargs["layer_types"]
        return kwargs

    def to_hf_config(self) -> dict:
        """The config.json of transformers' ``Qwen2ForCausalLM`` with this architecture."""
        if not self.qkv_bias:
            raise ValueError("Qwen2Config: qkv_bias=False has no equivalent in transformers' Qwen2 (its q, k, v "
                             "projections always have a bias)")  # fmt: skip
        d = {
            "model_type": self.model_type, "architectures": [self.architecture],
            "vocab_size": self.vocab_size, "hidden_size": self.n_embd, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layer, "num_attention_heads": self.n_head,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim, "hidden_act": "silu",
            "max_position_embeddings": self.block_size, "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_base, "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings, "use_sliding_window": self.use_sliding_window,
            "sliding_window": self.sliding_window, "max_window_layers": self.max_window_layers,
            "attention_dropout": self.attention_dropout, "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        }  # fmt: skip
        if self.layer_types is not None:
            d["layer_types"] = list(self.layer_types)
        return d


# --- finding a config ---------------------------------------------------------------------------

CONFIG_CLASSES: dict[str, type] = {"gpt2": GPT2Config, "qwen2": Qwen2Config}
ModelConfig = GPT2Config | Qwen2Config


def model_configs_dir() -> Path:
    """``configs/model/``: the named sizes (``gpt2-tiny.yaml``, ``qwen2-0.5b.yaml``, ...)."""
    return paths.configs_dir() / "model"


def available_configs() -> list[str]:
    """The names that :func:`load_model_config` finds in configs/model/."""
    return sorted(p.stem for p in model_configs_dir().glob("*.yaml"))


def config_from_yaml(path: str | Path) -> ModelConfig:
    """Read a YAML model config of either family (its ``family:`` key says which)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a model config must be a mapping of keys to values")
    if "family" not in d:
        raise ValueError(f"{path}: missing key 'family' (one of {', '.join(FAMILIES)})")
    if d["family"] not in CONFIG_CLASSES:
        raise ValueError(f"{path}: family={d['family']!r} is not one of {', '.join(FAMILIES)}")
    return CONFIG_CLASSES[d["family"]].from_dict(d, source=str(path))


def config_from_hf(config: dict | str | Path) -> ModelConfig:
    """Read an HF config (dict, config.json or folder) of either family (its ``model_type`` says which)."""
    d, source = _read_hf(config)
    model_type = d.get("model_type")
    classes = {c.model_type: c for c in CONFIG_CLASSES.values()}
    if model_type not in classes:
        raise ValueError(f"{source}: model_type={model_type!r} is not supported; the course builds "
                         f"{', '.join(classes)}")  # fmt: skip
    return classes[model_type].from_hf_config(d if source == "the HF config" else config)


def load_model_config(name_or_path: str | Path | ModelConfig) -> ModelConfig:
    """A config from a name in configs/model/ (``"gpt2-tiny"``), a .yaml file, or a folder/file of an HF config."""
    if isinstance(name_or_path, (GPT2Config, Qwen2Config)):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return config_from_yaml(path)
    if path.is_dir() or path.suffix == ".json":
        return config_from_hf(path)
    named = model_configs_dir() / f"{name_or_path}.yaml"
    if named.is_file():
        return config_from_yaml(named)
    raise FileNotFoundError(f"no model config {str(name_or_path)!r}: not a .yaml file, not a folder with a config.json, "
                            f"and not one of the named configs ({', '.join(available_configs())})")  # fmt: skip
