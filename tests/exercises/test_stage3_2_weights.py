"""Graded tests of stage 3: GPT-2's Hugging Face weights in the course's layout (exercises/stage3_models/weights.py).

A tiny ``transformers.GPT2LMHeadModel`` is built here from a ``GPT2Config``
(nothing is downloaded) and given random weights, norms and biases included.
Its state dict goes to ``gpt2_from_hf`` in three forms: as the model holds it
(``transformer.`` prefix, ``lm_head.weight`` present), as ``save_pretrained``
writes it (the tied ``lm_head.weight`` left out), and as the original OpenAI
checkpoint has it (no prefix, no ``lm_head``, the ``attn.bias`` / ``attn.masked_bias``
buffers in). A model with an untied head must keep its own ``lm_head``.

The answer is checked key by key against the mapping written out here, then
loaded with ``strict=True`` into a small GPT-2 assembled here from the course's
layers, whose logits must be those of the Hugging Face model. The usual
mistakes get their own sentence: the buffers kept, the prefix missing,
``lm_head`` missing or overwritten, the Conv1D weights not transposed, other
tensors (the embeddings) transposed too, the given dict changed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_course.grading.checks import assert_close
from llm_course.models.components import MLP, LayerNorm, LearnedPositionalEmbedding, Linear, MultiHeadAttention, TokenEmbedding

TOPIC = "stage3_models/weights"

weights_exercise = pytest.mark.exercise("gpt2_from_hf", stage=3, points=2, title="GPT-2 weights from Hugging Face")

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
SIZES = dict(vocab_size=61, n_positions=24, n_embd=32, n_layer=2, n_head=4)


# --- the two models ---------------------------------------------------------------------------


def hf_gpt2(rng, tie=True):
    """A tiny HF GPT-2 (transformers.GPT2LMHeadModel) in float64 with random weights everywhere."""
    import transformers  # here, not at the top: collecting the graded tests stays fast

    config = transformers.GPT2Config(**SIZES, bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie,
                                     attn_implementation="eager")  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=rng, dtype=torch.float64)
            p.copy_(1.0 + 0.3 * noise if ".ln_" in name and name.endswith("weight") else 0.2 * noise)
    return model


class CourseBlock(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(C), MultiHeadAttention(C, H)
        self.ln_2, self.mlp = LayerNorm(C), MLP(C)

    def forward(self, x):
        h = x + self.attn(self.ln_1(x))
        return h + self.mlp(self.ln_2(h))


class CourseGPT2(nn.Module):
    """GPT-2 from the course's layers, with the course's names (those of HF's GPT2LMHeadModel)."""

    def __init__(self, tie=True):
        super().__init__()
        V, P, C, L, H = (SIZES[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"))
        self.transformer = nn.Module()
        self.transformer.wte = TokenEmbedding(V, C)
        self.transformer.wpe = LearnedPositionalEmbedding(P, C)
        self.transformer.h = nn.ModuleList(CourseBlock(C, H) for _ in range(L))
        self.transformer.ln_f = LayerNorm(C)
        self.lm_head = Linear(C, V, bias=False)
        if tie:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids):
        t = self.transformer
        x = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))  # (B, T, C)
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))  # (B, T, V)


def expected_mapping(hf_state: dict) -> dict:
    """The course's state dict, written out name by name from the full HF state dict."""
    L = SIZES["n_layer"]
    out = {"transformer.wte.weight": hf_state["transformer.wte.weight"], "transformer.wpe.weight": hf_state["transformer.wpe.weight"]}
    for i in range(L):
        p = f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            out[p + norm + ".weight"] = hf_state[p + norm + ".weight"]
            out[p + norm + ".bias"] = hf_state[p + norm + ".bias"]
        for lin in CONV1D:
            out[p + lin + ".weight"] = hf_state[p + lin + ".weight"].T  # (in, out) -> (out, in)
            out[p + lin + ".bias"] = hf_state[p + lin + ".bias"]
    out["transformer.ln_f.weight"] = hf_state["transformer.ln_f.weight"]
    out["transformer.ln_f.bias"] = hf_state["transformer.ln_f.bias"]
    out["lm_head.weight"] = hf_state["lm_head.weight"]
    return out


# --- the checkpoint forms ---------------------------------------------------------------------


def saved_form(hf_state: dict) -> dict:
    """What save_pretrained writes for a tied model: no lm_head.weight."""
    return {k: v.clone() for k, v in hf_state.items() if k != "lm_head.weight"}


def openai_form(hf_state: dict) -> dict:
    """The original checkpoint: GPT2Model's names (no prefix), no lm_head, the mask buffers."""
    P = SIZES["n_positions"]
    out = {}
    for k, v in hf_state.items():
        if k == "lm_head.weight":
            continue
        out[k.removeprefix("transformer.")] = v.clone()
    for i in range(SIZES["n_layer"]):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P, dtype=torch.float64)).view(1, 1, P, P)
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.float64)
    return out


# --- the checks -------------------------------------------------------------------------------


def check_mapping(out, expected: dict) -> None:
    """Key by key against the expected mapping, each usual mistake with its sentence."""
    if not isinstance(out, dict):
        raise AssertionError(f"gpt2_from_hf must return a dict of name -> tensor, got {type(out).__name__}.")
    buffers = sorted(k for k in out if k.endswith((".attn.bias", ".attn.masked_bias")))
    if buffers:
        raise AssertionError(f"the attention-mask buffers are still there ({buffers[0]}, ...): they are not weights, drop every "
                             "key ending in .attn.bias or .attn.masked_bias (but keep .attn.c_attn.bias).")  # fmt: skip
    unprefixed = sorted(k for k in out if not k.startswith(("transformer.", "lm_head.")))
    if unprefixed:
        raise AssertionError(f"{unprefixed[0]!r} has no 'transformer.' prefix: the course's names are those of HF's "
                             f"GPT2LMHeadModel, e.g. 'transformer.{unprefixed[0]}'.")  # fmt: skip
    if "lm_head.weight" not in out:
        raise AssertionError("lm_head.weight is missing: GPT-2's output head is tied to the token embedding; when the "
                             "checkpoint leaves it out, it is transformer.wte.weight.")  # fmt: skip
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing:
        raise AssertionError(f"{len(missing)} weights are missing from the result, e.g. {missing[:3]}: every tensor of the checkpoint "
                             "except the two buffers must be kept.")  # fmt: skip
    if extra:
        raise AssertionError(f"the result has keys the course's GPT-2 does not have: {extra[:3]}.")
    for key, want in expected.items():
        got = out[key]
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{key} should be a tensor, got {type(got).__name__}.")
        conv1d = key.endswith(tuple(c + ".weight" for c in CONV1D))
        transposed = want.dim() == 2 and got.shape == want.T.shape and torch.equal(got.double(), want.T.double())
        if got.shape == want.shape and torch.equal(got.double(), want.double()):
            continue
        if transposed and conv1d:
            raise AssertionError(f"{key} is not transposed: HF's Conv1D stores (in, out) = {tuple(want.T.shape)}, "
                                 f"the course's Linear (out, in) = {tuple(want.shape)}; use .t().")  # fmt: skip
        if transposed:
            raise AssertionError(f"{key} is transposed, but only the weights of the four Conv1D layers (attn.c_attn, attn.c_proj, "
                                 "mlp.c_fc, mlp.c_proj) are; embeddings and norms keep their layout.")  # fmt: skip
        if key == "lm_head.weight":
            raise AssertionError("lm_head.weight is not the one the checkpoint gives: keep a given lm_head.weight, and use "
                                 "transformer.wte.weight only when it is missing.")  # fmt: skip
        raise AssertionError(f"{key} holds other values than the checkpoint's (shape {tuple(got.shape)}, expected {tuple(want.shape)}).")


def check_logits(out, hf_model, tie, rng) -> None:
    model = CourseGPT2(tie=tie).double().eval()
    try:
        model.load_state_dict(out, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise AssertionError(f"the result does not load into the course's GPT-2 with strict=True: {' '.join(first[:3])}") from None
    ids = torch.randint(0, SIZES["vocab_size"], (2, 9), generator=rng)
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = model(ids)
    assert_close(got, expected, hint="the course's GPT-2 with these weights does not give the Hugging Face model's logits.", what="the logits", atol=1e-8, rtol=1e-8)


def run(fn, given: dict):
    snapshot = {k: (v.shape, v.clone()) for k, v in given.items()}
    out = fn(given)
    changed = sorted(set(snapshot) ^ set(given)) or [k for k, (shape, v) in snapshot.items() if given[k].shape != shape or not torch.equal(given[k], v)]
    if changed:
        raise AssertionError(f"gpt2_from_hf changed the state dict it was given ({changed[0]}): build a new dict and leave the input as it is.")
    return out


# --- the tests --------------------------------------------------------------------------------


@weights_exercise
def test_model_state_dict_with_prefix_and_head(impl, rng):
    fn = impl.load(TOPIC).gpt2_from_hf
    hf = hf_gpt2(rng)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    out = run(fn, state)
    check_mapping(out, expected_mapping(hf.state_dict()))
    check_logits(out, hf, True, rng)


@weights_exercise
def test_saved_checkpoint_without_the_tied_head(impl, rng):
    fn = impl.load(TOPIC).gpt2_from_hf
    hf = hf_gpt2(rng)
    out = run(fn, saved_form(hf.state_dict()))
    check_mapping(out, expected_mapping(hf.state_dict()))
    check_logits(out, hf, True, rng)


@weights_exercise
def test_original_openai_checkpoint(impl, rng):
    """No prefix, no lm_head, and the causal-mask buffers of older transformers versions."""
    fn = impl.load(TOPIC).gpt2_from_hf
    hf = hf_gpt2(rng)
    out = run(fn, openai_form(hf.state_dict()))
    check_mapping(out, expected_mapping(hf.state_dict()))
    check_logits(out, hf, True, rng)


@weights_exercise
def test_untied_head_is_kept(impl, rng):
    fn = impl.load(TOPIC).gpt2_from_hf
    hf = hf_gpt2(rng, tie=False)
    state = hf.state_dict()
    assert not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    out = run(fn, {k: v.clone() for k, v in state.items()})
    check_mapping(out, expected_mapping(state))
    check_logits(out, hf, False, rng)
