"""The models, built from the layers in ``components`` (which call ``llm_course.ops``).

* ``config``: :class:`GPT2Config`, :class:`Qwen2Config`, :func:`load_model_config` (named sizes in configs/model/).
* ``gpt2`` / ``qwen2``: :class:`GPT2LMHeadModel`, :class:`Qwen2ForCausalLM`, with transformers' parameter names.
* ``kv_cache``: the static :class:`KVCache` that generation fills in place.
* ``modeling_auto``: :class:`AutoModelForCausalLM` (``from_name``, ``from_config``, ``from_pretrained``).
"""

from llm_course.models.config import GPT2Config, Qwen2Config, load_model_config
from llm_course.models.gpt2 import GPT2LMHeadModel
from llm_course.models.kv_cache import KVCache
from llm_course.models.modeling_auto import AutoConfig, AutoModelForCausalLM
from llm_course.models.qwen2 import Qwen2ForCausalLM

__all__ = [
    "AutoConfig",
    "AutoModelForCausalLM",
    "GPT2Config",
    "GPT2LMHeadModel",
    "KVCache",
    "Qwen2Config",
    "Qwen2ForCausalLM",
    "load_model_config",
]
