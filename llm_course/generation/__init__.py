"""Generation: from a model's logits to text (stage 3).

    from llm_course.generation import generate, TextStreamer
    out = generate(model, input_ids, attention_mask, max_new_tokens=20, do_sample=True, top_p=0.9, seed=0)

* ``sampling``  -- repetition penalty, temperature, top-k, top-p, the choice of the next token;
* ``generate``  -- the loop: prefill, then decode steps from the static KV cache;
* ``stopping``  -- EOS tokens and stop strings;
* ``streaming`` -- print the text while it comes (``TextStreamer``);
* ``chat``      -- chat templates (ChatML for the course, a model folder's own template);
* ``loading``, ``cli`` -- ``llm-course generate``: a model and its tokenizer from one name.
* ``chat_cli`` -- ``llm-course chat``: a conversation loop; ``chat_turn`` and ``ChatSession`` for a notebook.
"""

from llm_course.generation.chat import apply_chat_template
from llm_course.generation.generate import decode_step, generate, prefill
from llm_course.generation.sampling import apply_repetition_penalty, apply_temperature, sample_next, top_k_top_p_filter
from llm_course.generation.streaming import TextStreamer

__all__ = [
    "apply_chat_template",
    "apply_repetition_penalty",
    "apply_temperature",
    "decode_step",
    "generate",
    "prefill",
    "sample_next",
    "top_k_top_p_filter",
    "TextStreamer",
]
