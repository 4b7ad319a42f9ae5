"""The pretraining loss (llm_course/training/loss.py) on tiny random GPT-2 and Qwen2 models.

``causal_lm_loss`` gives the summed next-token cross-entropy and the token count that
``F.cross_entropy`` over the model's logits gives; the fused path (no logits) gives the
same loss and the same gradients for every parameter (the tied output layer included)
on both backends, puts the output layer back even when the model fails, and ``loss_fn``
is the mean over counted labels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_course.backends import use_backend
from llm_course.models import AutoModelForCausalLM
from llm_course.training.loss import causal_lm_loss, loss_fn


def _batch(model, rng, B=2, T=9):
    V = model.config.vocab_size
    ids = torch.randint(0, V, (B, T + 1), generator=rng)
    x, y = ids[:, :-1].clone(), ids[:, 1:].clone()
    y[0, :3] = -100  # a prompt that is not trained on
    return x, y


def _model(name):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_name(name).float()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen2-tiny"])
def test_loss_sum_and_count_match_f_cross_entropy(rng, name):
    model = _model(name)
    x, y = _batch(model, rng)
    loss_sum, n = causal_lm_loss(model, x, y)
    logits = model(x)
    ref = F.cross_entropy(logits.double().flatten(0, 1), y.flatten(), reduction="sum")
    assert n.item() == 2 * 9 - 3 and loss_sum.dtype == torch.float32
    torch.testing.assert_close(loss_sum.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss_fn(model, x, y).double(), ref / n, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])  # the whole model in the interpreter
@pytest.mark.parametrize("name", ["gpt2-tiny", "qwen2-tiny"])
def test_fused_gives_the_same_loss_and_gradients(rng, backend, name):
    model = _model(name)
    x, y = _batch(model, rng)
    with use_backend("torch"):
        loss_sum, n = causal_lm_loss(model, x, y)
    loss_sum.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    head = model.lm_head
    with use_backend(backend):
        fused_sum, fused_n = causal_lm_loss(model, x, y, fused=True)
    fused_sum.backward()
    assert model.lm_head is head and fused_n == n
    torch.testing.assert_close(fused_sum, loss_sum, rtol=1e-5, atol=1e-4)
    got = _grads(model)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-5, msg=f"{backend} {name}: grad of {k}")


def test_the_output_layer_is_put_back_when_the_model_fails(rng):
    model = _model("gpt2-tiny")
    head = model.lm_head
    too_long = torch.zeros(1, model.config.block_size + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="block_size"):
        causal_lm_loss(model, too_long, too_long, fused=True)
    assert model.lm_head is head


def test_labels_of_another_shape_are_refused(rng):
    model = _model("gpt2-tiny")
    x, y = _batch(model, rng)
    with pytest.raises(ValueError, match=r"^causal_lm_loss: labels has shape \(2, 8\)"):
        causal_lm_loss(model, x, y[:, :-1])
