"""Stage 3 exercise: load GPT-2's published weights into the course's model (exercise gpt2_from_hf).

A checkpoint is a *state dict*: a dict from parameter names to tensors. The
course's GPT-2 uses the names of Hugging Face's ``GPT2LMHeadModel``, so most
tensors go across as they are. Four things differ:

1. **Conv1D.** HF's GPT-2 computes its four projections with ``Conv1D``, a linear
   layer that stores its weight as (in_features, out_features) and computes
   ``x @ weight``. The course's ``Linear`` (like ``torch.nn.Linear``) stores
   (out_features, in_features) and computes ``x @ weight.T``. So the weights of
   ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` are transposed.
   Nothing else is: their biases are vectors, the embeddings ``wte`` (V, C) and
   ``wpe`` are lookup tables read row by row, and the norms are vectors.
2. **Prefix.** ``GPT2LMHeadModel`` names the body ``transformer.`` (``transformer.h.0.ln_1.weight``);
   the original OpenAI checkpoint, saved from the bare ``GPT2Model``, has no prefix
   (``h.0.ln_1.weight``, ``wte.weight``). The course's names have it.
3. **Buffers.** Older checkpoints also hold ``h.{i}.attn.bias`` (the causal mask,
   a (1, 1, n_positions, n_positions) triangle of ones) and ``h.{i}.attn.masked_bias``
   (a constant). They are not weights -- the course's attention builds its mask
   itself -- so they are dropped. Careful: ``h.{i}.attn.c_attn.bias`` *is* a weight.
4. **Tied head.** GPT-2's output layer ``lm_head`` (V, C) is the token embedding
   ``wte`` itself (the same matrix reads tokens in and scores them out), so saved
   checkpoints usually leave ``lm_head.weight`` out. When it is missing, it is
   ``transformer.wte.weight``.

The course's loader, which also reads the files and handles Qwen2, is
``llm_course/models/hf_weights.py`` (look there only once you are done). Check
your work with ``.venv/bin/llm-course grade 3``.
"""

from __future__ import annotations

import torch


def gpt2_from_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face GPT-2 state dict to the course's names and layout.

    Args:
        state_dict: ``{name: tensor}`` of a GPT-2 checkpoint, in either naming:
            ``transformer.h.0.attn.c_attn.weight`` (``GPT2LMHeadModel``, maybe with
            ``lm_head.weight``) or ``h.0.attn.c_attn.weight`` (``GPT2Model``, the
            original OpenAI files, maybe with the ``attn.bias``/``attn.masked_bias``
            buffers). Leave it unchanged.

    Returns:
        A new dict that ``model.load_state_dict(..., strict=True)`` accepts for the
        course's ``GPT2LMHeadModel``:

        * every key starts with ``transformer.``, except ``lm_head.weight``;
        * ``*.attn.c_attn.weight``, ``*.attn.c_proj.weight``, ``*.mlp.c_fc.weight``
          and ``*.mlp.c_proj.weight`` transposed to (out, in); every other tensor
          as it is;
        * no ``*.attn.bias`` / ``*.attn.masked_bias`` buffers;
        * ``lm_head.weight``: the one given, or else ``transformer.wte.weight``.

    Hint: one loop over ``state_dict.items()``: fix the name, skip the buffers
    (``name.endswith((".attn.bias", ".attn.masked_bias"))``), transpose the four
    Conv1D weights with ``.t()`` (``.t().contiguous()`` gives them the usual
    memory layout), then add ``lm_head.weight`` if it is still missing.
    """
    # BEGIN EXERCISE gpt2_from_hf
    # stub raises: "gpt2_from_hf: add the 'transformer.' prefix, transpose the 4 Conv1D weights, drop attn.bias/masked_bias, add lm_head.weight = wte"
    conv1d = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    buffers = (".attn.bias", ".attn.masked_bias")
    out = {}
    for name, tensor in state_dict.items():
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # GPT2Model's names: h.0..., wte.weight, ...
        if name.endswith(buffers):
            continue  # the causal mask and its fill value: not weights
        if name.endswith(conv1d):
            tensor = tensor.t().contiguous()  # Conv1D (in, out) -> Linear (out, in)
        out[name] = tensor
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]  # tied to the token embedding
    return out
    # END EXERCISE gpt2_from_hf
