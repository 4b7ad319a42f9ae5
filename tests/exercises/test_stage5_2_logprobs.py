"""Graded tests of stage 5: a reply's summed log-probability (exercises/stage5_finetune/logprobs.py).

Random logits and rows of prompt + reply + padding, the reply's place different in every
row. The result is compared with plain loops in float64 (token t scored by the logits of
position t - 1, only where the reply's mask is True, summed). A wrong answer is compared with
the usual mistakes, each computed here: the prompt (or the padding) counted too, the labels
not shifted (logits t scoring token t), the mask shifted the wrong way, a mean instead of a
sum, probabilities instead of log-probabilities, a log-softmax over the time axis.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage5_finetune/logprobs"

logprobs_exercise = pytest.mark.exercise("sequence_logprobs", stage=5, points=2, title="Sequence log-probabilities of a reply")


def make_rows(rng, B=5, T=12, V=17, dtype=torch.float32):
    logits = (torch.randn(B, T, V, generator=rng, dtype=torch.float64) * 2).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=rng)
    start = torch.randint(2, T // 2, (B, 1), generator=rng)  # the reply's first token
    end = torch.randint(T // 2 + 1, T + 1, (B, 1), generator=rng)  # padding from here
    pos = torch.arange(T)
    mask = (pos >= start) & (pos < end)
    mask[0] = (pos >= start[0]) & (pos < T)  # one row without padding
    return logits, ids, mask


def reference(logits, ids, mask):
    B, T, _ = logits.shape
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for t in range(1, T):
            if mask[b, t]:
                out[b] += logits[b, t - 1].double().log_softmax(-1)[ids[b, t]]
    return out


def mistakes(logits, ids, mask):
    lg = logits.double()
    shifted = lg[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    unshifted = lg.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)  # (B, T)
    m = mask[:, 1:].double()
    return [
        (lambda: shifted.sum(-1), "the prompt and the padding are counted too: multiply by the reply's mask before summing."),
        (lambda: (unshifted * mask).sum(-1), "the labels are not shifted: logits[:, t] predict input_ids[:, t + 1], so token t "
                                             "is scored by logits[:, t - 1] (use logits[:, :-1] with input_ids[:, 1:])."),
        (lambda: (shifted * mask[:, :-1]).sum(-1), "the mask is off by one: the predicted tokens are input_ids[:, 1:], so their "
                                                   "mask is response_mask[:, 1:], not response_mask[:, :-1]."),
        (lambda: (shifted * m).sum(-1) / m.sum(-1).clamp(min=1), "this is the mean over the reply's tokens: DPO uses the sum "
                                                                 "(the log of the reply's probability)."),
        (lambda: (lg[:, :-1].softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1) * m).sum(-1),
         "these are probabilities, not log-probabilities: use log_softmax (softmax then log is also right, but less exact)."),
        (lambda: (lg[:, :-1].log_softmax(1).gather(-1, ids[:, 1:, None]).squeeze(-1) * m).sum(-1),
         "the log-softmax runs over the time axis: normalize over the vocabulary, dim=-1."),
    ]  # fmt: skip


def check(fn, logits, ids, mask):
    got = fn(logits.clone(), ids.clone(), mask.clone())
    expected = reference(logits, ids, mask)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape, (
        f"sequence_logprobs should return a tensor of shape {tuple(expected.shape)} (one number per row)")
    assert got.dtype == torch.float32, f"sequence_logprobs should return float32 (compute in float32), got {got.dtype}"
    hint = which_mistake(got, expected, mistakes(logits, ids, mask), atol=1e-3, rtol=1e-4)
    assert_close(got.double(), expected, atol=1e-3, rtol=1e-4, what="the summed log-probabilities",
                 hint=hint or "the summed log-probabilities of the reply tokens are wrong.")  # fmt: skip


@logprobs_exercise
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_loops(impl, rng, dtype):
    check(impl.load(TOPIC).sequence_logprobs, *make_rows(rng, dtype=dtype))


@logprobs_exercise
def test_prompt_and_padding_logits_do_not_matter(impl, rng):
    fn = impl.load(TOPIC).sequence_logprobs
    logits, ids, mask = make_rows(rng)
    before = fn(logits.clone(), ids, mask)
    unused = torch.ones_like(mask)
    unused[:, :-1] = ~mask[:, 1:]  # positions whose prediction is not a reply token
    noisy = logits + 50 * torch.randn(logits.shape, generator=rng) * unused[..., None]
    assert torch.allclose(fn(noisy, ids, mask), before, atol=1e-3), (
        "changing the logits of positions that predict a prompt or padding token changed the result: only the "
        "positions t - 1 of reply tokens t may count.")


@logprobs_exercise
def test_large_vocabulary_single_row(impl, rng):
    check(impl.load(TOPIC).sequence_logprobs, *make_rows(rng, B=1, T=9, V=1000))
