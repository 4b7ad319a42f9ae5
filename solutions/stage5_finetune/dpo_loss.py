"""Stage 5 exercises: the DPO loss (exercise dpo_loss) and its reward accuracy (exercise reward_accuracy).

For a prompt x with a preferred reply y_w (chosen) and a worse one y_l (rejected), DPO
gives each reply an *implicit reward*, how much training has raised its log-probability
above the frozen reference model's, scaled by beta:

    r_w = beta * (log pi(y_w | x) - log pi_ref(y_w | x))
    r_l = beta * (log pi(y_l | x) - log pi_ref(y_l | x))

and the loss of the pair is the logistic loss of the chosen reply winning:

    loss = -log sigmoid(r_w - r_l)

averaged over the pairs. ``-log sigmoid(z)`` is small when z is large (the chosen reply
clearly preferred) and about -z when z is very negative: compute it with
``torch.nn.functional.logsigmoid``, which stays exact where ``sigmoid`` rounds to 0 and its
log becomes -inf. The reference only *measures*: no gradient may flow into its
log-probabilities (``.detach()`` them; in training they come from a frozen copy anyway).

The reward accuracy is the share of pairs where the chosen reply's reward is strictly
above the rejected one's (a tie is not a win). At the start, when the policy is the
reference, every reward is 0: the loss is log 2 and the accuracy 0.

The course's own version, with the metrics the trainer logs, is in
``llm_course/training/dpo.py``. Check your work with ``.venv/bin/llm-course grade 5``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:  # fmt: skip
    """The sigmoid DPO loss, averaged over the pairs.

    Args:
        policy_chosen_logps, policy_rejected_logps: (P,) summed log-probs of the replies under the policy.
        ref_chosen_logps, ref_rejected_logps: (P,) the same under the reference (must get no gradient).
        beta: > 0, the reward scale.
    Returns:
        a 0-d tensor: mean over the P pairs of ``-logsigmoid(r_w - r_l)``.
    """
    # BEGIN EXERCISE dpo_loss
    # stub raises: "dpo_loss: rewards beta * (policy - reference) with the reference detached, then -logsigmoid(r_w - r_l), mean"
    chosen_reward = beta * (policy_chosen_logps - ref_chosen_logps.detach())  # (P,)
    rejected_reward = beta * (policy_rejected_logps - ref_rejected_logps.detach())  # (P,)
    return -F.logsigmoid(chosen_reward - rejected_reward).mean()
    # END EXERCISE dpo_loss


def reward_accuracy(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The share of pairs whose chosen reply has the higher implicit reward.

    Args: as :func:`dpo_loss` (beta > 0 does not change which reward is larger, so it is not needed).
    Returns:
        a 0-d float tensor in [0, 1]: the fraction of pairs with
        ``policy_chosen - ref_chosen > policy_rejected - ref_rejected`` (strictly).
    """
    # BEGIN EXERCISE reward_accuracy
    # stub raises: "reward_accuracy: compare the rewards (policy minus reference), strictly, and average"
    chosen_reward = policy_chosen_logps - ref_chosen_logps
    rejected_reward = policy_rejected_logps - ref_rejected_logps
    return (chosen_reward > rejected_reward).float().mean()
    # END EXERCISE reward_accuracy
