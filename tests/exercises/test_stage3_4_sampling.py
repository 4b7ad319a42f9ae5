"""Graded tests of stage 3: temperature, top-k and top-p (exercises/stage3_models/sampling.py).

``top_k_top_p`` is checked against a float64 reference written here token by
token from the definitions (temperature on the logits, then the k largest,
then the most likely tokens up to and including the one where the cumulative
probability reaches top_p, then a softmax over what is kept), and against
Hugging Face's own ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper`` as a second reference. Logits are random and without ties;
each top_p is drawn so that no row has a token within 1e-3 of the threshold,
so rounding never decides the answer. A hand-made batch shows the top-p
boundary.

A wrong answer is compared with the usual mistakes (top-p keeping one token
too few or too many at the boundary, top-k keeping k + 1 or k - 1, the
temperature applied after the softmax or multiplied, the kept probabilities
not renormalized, top-p before top-k, top-p computed before the temperature)
and the failure names the one it matches, only when the error looks like that
mistake (``which_mistake``).
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_course.grading.checks import assert_close, which_mistake

TOPIC = "stage3_models/sampling"

sampling_exercise = pytest.mark.exercise("top_k_top_p", stage=3, points=2, title="Temperature, top-k and top-p")

V = 40


def reference(logits, temperature=1.0, top_k=None, top_p=None, *, k_shift=0, p_rule="before", p_shift=0, temp="divide",
              renorm=True, order="k, p", p_temperature=True):  # fmt: skip
    """float64, row by row from the definitions; the keyword arguments make the usual wrong variants."""
    t = {"divide": temperature, "after softmax": 1.0, "multiply": 1.0 / temperature}[temp]
    out = torch.zeros(logits.shape, dtype=torch.float64)
    for b, row in enumerate(logits.double().tolist()):
        scaled = [z / t for z in row]
        ranked = sorted(range(len(row)), key=lambda i: -scaled[i])  # most likely first

        def top_k_of(kept):
            return kept if not top_k else kept[: max(0, min(top_k + k_shift, len(row)))]

        def top_p_of(kept):
            if top_p is None or top_p >= 1.0:
                return kept
            source = scaled if p_temperature else row
            m = max(source[i] for i in kept)
            w = [math.exp(source[i] - m) for i in kept]
            probs = [x / sum(w) for x in w]
            n, before = 0, 0.0
            for p in probs:
                if (before < top_p) if p_rule == "before" else (before + p <= top_p):
                    n += 1
                before += p
            return kept[: min(max(n, 1) + p_shift, len(kept))]

        kept = top_p_of(top_k_of(ranked)) if order == "k, p" else top_k_of(top_p_of(ranked))
        if not kept:  # a variant that keeps nothing: a row of NaN in the learner's softmax, of 0 here
            continue
        pool = kept if renorm else range(len(row))
        m = max(scaled[i] for i in pool)
        total = sum(math.exp(scaled[i] - m) for i in pool)
        for i in kept:
            out[b, i] = math.exp(scaled[i] - m) / total
    return out


MISTAKES = [
    (dict(p_rule="including"), "top-p drops the token that crosses top_p: keep the most likely tokens up to and *including* the one where the "
                               "cumulative probability reaches top_p (keep a token when the mass before it is < top_p)."),
    (dict(p_shift=1), "top-p keeps one token too many: stop at the token where the cumulative probability reaches top_p."),
    (dict(p_shift=-1), "top-p keeps one token too few: keep the most likely tokens up to and including the one where the cumulative "
                       "probability reaches top_p."),
    (dict(k_shift=1), "top-k keeps k + 1 tokens: keep exactly the k largest logits."),
    (dict(k_shift=-1), "top-k keeps k - 1 tokens: keep exactly the k largest logits (the k-th largest included)."),
    (dict(temp="after softmax"), "the temperature has no effect: divide the logits by it before the softmax (dividing probabilities "
                                 "and renormalizing changes nothing)."),
    (dict(temp="multiply"), "the logits are multiplied by the temperature; divide them: softmax(logits / temperature)."),
    (dict(renorm=False), "the kept probabilities are not renormalized: take the softmax of the filtered logits (the removed ones "
                         "at -inf), so that each row sums to 1."),
    (dict(order="p, k"), "top-p is computed on the distribution before top-k; apply top-k first, then top-p to the renormalized "
                          "probabilities of the tokens top-k kept."),
    (dict(p_temperature=False), "top-p is computed on the probabilities before the temperature; divide the logits by the temperature first."),
]


def hf_reference(logits, temperature, top_k, top_p):
    """Hugging Face's warpers, in generate's order, then a softmax."""
    import transformers.generation.logits_process as lp
    scores = lp.TemperatureLogitsWarper(temperature)(None, logits.float())
    if top_k:
        scores = lp.TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None and top_p < 1.0:
        scores = lp.TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(dim=-1)


def check(fn, logits, temperature=1.0, top_k=None, top_p=None, *, mistakes=MISTAKES, hf=True):
    out = fn(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    args = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    expected = reference(logits, **args)
    candidates = [(lambda kw=kw: reference(logits, **args, **kw), sentence) for kw, sentence in mistakes]
    hint = which_mistake(out, expected, candidates, atol=1e-5, rtol=1e-5)
    setting = f"temperature={temperature}, top_k={top_k}, top_p={top_p}"
    assert_close(out, expected, hint=hint or f"the probabilities differ from the definition ({setting}).", what="the probabilities", atol=1e-5, rtol=1e-5)
    assert out.dtype == torch.float32, f"the probabilities must be float32, got {out.dtype}."
    if hf:
        assert_close(out, hf_reference(logits, temperature, top_k, top_p), atol=1e-5, rtol=1e-5, what="the probabilities",
                     hint=f"the probabilities differ from those of Hugging Face's warpers ({setting}).")  # fmt: skip


def distinct_logits(rng, B, scale=2.0):
    """(B, V) float32 logits without ties."""
    while True:
        x = scale * torch.randn(B, V, generator=rng)
        if all(len(set(r)) == V for r in x.tolist()):
            return x


def safe_top_p(logits, temperature, top_k, rng, low=0.3, high=0.95):
    """A top_p in [low, high] that no row's cumulative mass (before or including a token) comes within 1e-3 of."""
    for _ in range(1000):
        p = low + (high - low) * float(torch.rand((), generator=rng))
        ok = True
        for row in reference(logits, temperature, top_k).tolist():
            probs = sorted((x for x in row if x > 0), reverse=True)
            cum = [sum(probs[: i + 1]) for i in range(len(probs))]
            if min(abs(c - p) for c in [0.0] + cum) < 1e-3:
                ok = False
                break
        if ok:
            return p
    raise RuntimeError("no safe top_p found")  # practically impossible with random logits


@sampling_exercise
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_temperature_alone(impl, rng, temperature):
    fn = impl.load(TOPIC).top_k_top_p
    check(fn, distinct_logits(rng, 3), temperature)


@sampling_exercise
@pytest.mark.parametrize("top_k", [1, 3, 17, V - 1, V, V + 5])
def test_top_k(impl, rng, top_k):
    fn = impl.load(TOPIC).top_k_top_p
    check(fn, distinct_logits(rng, 3), 0.8, top_k=top_k)


@sampling_exercise
@pytest.mark.parametrize("temperature", [1.0, 1.3, 0.7])
def test_top_p(impl, rng, temperature):
    fn = impl.load(TOPIC).top_k_top_p
    logits = distinct_logits(rng, 4)
    check(fn, logits, temperature, top_p=safe_top_p(logits, temperature, None, rng))


@sampling_exercise
def test_top_p_boundary_by_hand(impl, rng):
    """Row 0: probabilities 0.5, 0.25, 0.15, 0.1; row 1: 0.2, 0.6, 0.05, 0.15. With top_p = 0.7, each keeps its two
    most likely tokens: the second one crosses 0.7 (0.5 -> 0.75, 0.6 -> 0.8) and is kept; the third is not."""
    fn = impl.load(TOPIC).top_k_top_p
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.2, 0.6, 0.05, 0.15]])
    logits = probs.log() + torch.randn(2, 1, generator=rng)  # a shift per row changes nothing
    check(fn, logits, top_p=0.7)


@sampling_exercise
@pytest.mark.parametrize("top_k,temperature", [(5, 0.8), (20, 1.5), (3, 1.0)])
def test_top_k_then_top_p(impl, rng, top_k, temperature):
    fn = impl.load(TOPIC).top_k_top_p
    logits = distinct_logits(rng, 4, scale=1.0)  # flat enough that top-k and top-p both cut
    # The mistakes that only show when both filters act come first: where two mistakes give the same
    # answer here, the one that test_top_k and test_top_p would not have caught is named.
    both = [m for m in MISTAKES if "order" in m[0] or "p_temperature" in m[0]]
    others = [m for m in MISTAKES if m not in both]
    check(fn, logits, temperature, top_k=top_k, top_p=safe_top_p(logits, temperature, top_k, rng, 0.5, 0.97), mistakes=both + others)


@sampling_exercise
def test_greedy_limits_and_no_filter(impl, rng):
    """top_p = 0 or top_k = 1 keep only the most likely token; top_k = 0 / None and top_p = 1 / None filter nothing."""
    fn = impl.load(TOPIC).top_k_top_p
    logits = distinct_logits(rng, 3)
    greedy = torch.nn.functional.one_hot(logits.argmax(-1), V).double()
    for kwargs in (dict(top_p=0.0), dict(top_k=1), dict(top_k=1, top_p=0.5)):
        assert_close(fn(logits, **kwargs), greedy, hint=f"{kwargs} must keep only the most likely token (probability 1).", what="the probabilities")
    for kwargs in (dict(), dict(top_k=0), dict(top_p=1.0), dict(top_k=None, top_p=None)):
        assert_close(fn(logits, **kwargs), torch.softmax(logits.double(), -1), hint=f"{kwargs} must filter nothing: softmax(logits).", what="the probabilities")


@sampling_exercise
def test_float16_logits(impl, rng):
    fn = impl.load(TOPIC).top_k_top_p
    logits = (torch.stack([torch.randperm(V, generator=rng) for _ in range(3)]) * 0.125 - 2.0).half()  # exact, no ties
    check(fn, logits, 0.9, top_k=12, top_p=safe_top_p(logits, 0.9, 12, rng))
