"""Stage 4 exercise: one step of AdamW (exercise adamw_step).

Adam keeps, for every parameter element, two running averages of its gradient g:

    m = beta1 * m + (1 - beta1) * g          the mean of g      (exp_avg)
    v = beta2 * v + (1 - beta2) * g * g      the mean of g**2   (exp_avg_sq)

and moves each element by ``lr * m / sqrt(v)``: about ``lr`` per step whatever the
scale of its gradient. Three details make it AdamW, as ``torch.optim.AdamW``:

1. **Bias correction.** m and v start at 0, so after t steps they are too small
   by the factors ``1 - beta1**t`` and ``1 - beta2**t`` (with beta2 = 0.95, v is
   only 5 % of the mean of g**2 after the first step). Divide them out:
   ``m_hat = m / (1 - beta1**t)``, ``v_hat = v / (1 - beta2**t)``, with t = 1 on
   the first step.
2. **eps outside the square root**: ``p -= lr * m_hat / (sqrt(v_hat) + eps)``.
   eps only keeps the division finite where v_hat is 0.
3. **Decoupled weight decay** (Loshchilov & Hutter, "Decoupled Weight Decay
   Regularization"): shrink the weights directly, ``p *= 1 - lr * weight_decay``,
   *before* the Adam update. Adding ``weight_decay * p`` to the gradient instead
   (the "L2" of plain Adam) is not the same: that term then goes through m and v,
   and a weight with large gradients is hardly decayed at all.

The trainer (``llm_course/training/``) uses ``torch.optim.AdamW`` itself, and
applies weight decay only to matrices, not to norms, biases or embeddings.
Check your work with ``.venv/bin/llm-course grade 4``.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    step: int,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """Update ``params``, ``exp_avg`` and ``exp_avg_sq`` in place with one AdamW step; returns None.

    Args:
        params: the parameters (any shapes), changed in place.
        grads: their gradients, same shapes; read only, never changed.
        exp_avg, exp_avg_sq: the running averages m and v of each parameter
            (zeros before the first step), changed in place.
        step: the number of this step, counting from 1 (1 on the first call):
            the t of the bias corrections ``1 - beta1**t`` and ``1 - beta2**t``.
        lr, betas (beta1, beta2), eps, weight_decay: as in ``torch.optim.AdamW``.

    Hint: in-place tensor methods (``p.mul_``, ``m.mul_(beta1).add_(g, alpha=1 - beta1)``,
    ``v.mul_(beta2).addcmul_(g, g, value=1 - beta2)``, ``p.addcdiv_``) or
    ``t.copy_(new value)`` change a tensor that the caller holds; ``p = p - ...``
    only rebinds a local name.
    """
    # BEGIN EXERCISE adamw_step
    # stub raises: "adamw_step: per parameter, p *= 1 - lr * wd; m, v = running means of g and g*g; p -= lr * m_hat / (sqrt(v_hat) + eps) with bias corrections 1 - beta**step"
    beta1, beta2 = betas
    bias1 = 1.0 - beta1**step  # how much m still underestimates the mean of g
    bias2 = 1.0 - beta2**step
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        p.mul_(1.0 - lr * weight_decay)  # decoupled weight decay, on the weights
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v / bias2).sqrt_().add_(eps)  # sqrt(v_hat) + eps
        p.addcdiv_(m, denom, value=-lr / bias1)  # p -= lr * m_hat / denom
    # END EXERCISE adamw_step
