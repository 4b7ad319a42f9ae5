"""Build a model from a name, a config or a checkpoint folder, whatever its family.

    from llm_course.models import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_name("gpt2-tiny")            # configs/model/gpt2-tiny.yaml, random weights
    model = AutoModelForCausalLM.from_config(cfg)                  # a GPT2Config or Qwen2Config
    model = AutoModelForCausalLM.from_pretrained("checkpoints/x")  # an HF folder: config.json + safetensors

The names mirror transformers' ``AutoConfig`` / ``AutoModelForCausalLM``: the config's
``family`` (from a YAML file's ``family:`` or a config.json's ``model_type``) picks the class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm_course.models.config import GPT2Config, ModelConfig, Qwen2Config, load_model_config
from llm_course.models.gpt2 import GPT2LMHeadModel
from llm_course.models.qwen2 import Qwen2ForCausalLM

MODEL_CLASSES: dict[str, type] = {"gpt2": GPT2LMHeadModel, "qwen2": Qwen2ForCausalLM}


class AutoConfig:
    """``AutoConfig.from_name("qwen2-tiny")``, ``.from_pretrained(path)``: a GPT2Config or Qwen2Config."""

    @staticmethod
    def from_name(name: str) -> ModelConfig:
        return load_model_config(name)

    @staticmethod
    def from_pretrained(name_or_path: str | Path) -> ModelConfig:
        """A named config, a .yaml file, or an HF folder / config.json."""
        return load_model_config(name_or_path)


class AutoModelForCausalLM:
    """Pick the model class from the config's family."""

    @staticmethod
    def from_config(config: ModelConfig, *, dtype: torch.dtype | None = None, device=None):
        """A freshly initialized model (random weights) for ``config``."""
        if not isinstance(config, (GPT2Config, Qwen2Config)):
            raise TypeError(f"AutoModelForCausalLM: config must be a GPT2Config or Qwen2Config, got {type(config).__name__}")
        model = MODEL_CLASSES[config.family](config)
        if dtype is not None or device is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    @staticmethod
    def from_name(name: str, *, dtype: torch.dtype | None = None, device=None):
        """A freshly initialized model from a named config (``"gpt2-tiny"``) or a .yaml file."""
        return AutoModelForCausalLM.from_config(load_model_config(name), dtype=dtype, device=device)

    @staticmethod
    def from_pretrained(path: str | Path, *, dtype: torch.dtype | None = None, device=None):
        """A model with the weights of a local HF folder (config.json + model.safetensors, or sharded)."""
        from llm_course.models.hf_weights import load_pretrained  # imported here: only this needs safetensors

        return load_pretrained(path, dtype=dtype, device=device)
