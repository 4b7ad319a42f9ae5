"""``llm-course dpo --config NAME_OR_FILE``: direct preference optimization (or resume a run).

    llm-course dpo --config dpo-tiny-cpu                          # configs/train/dpo-tiny-cpu.yaml
    llm-course dpo --config dpo-course-lm --set dpo.beta=0.2
    llm-course dpo --config dpo-course-lm --set dpo.sft_weight=0.0   # plain DPO, no SFT term on the chosen replies
    torchrun --nproc_per_node 8 -m llm_course.training.dpo --config dpo-course-lm   # DDP

**The objective.** For a prompt x with a preferred reply y_w ("chosen") and a worse one y_l
("rejected"), DPO (Rafailov et al., 2023) trains the policy pi to raise the *implicit reward*

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))

of y_w above that of y_l, with the logistic (Bradley-Terry) loss

    loss = -log sigmoid(r(x, y_w) - r(x, y_l))

averaged over the pairs. ``pi_ref`` is the model DPO started from, frozen: the log-ratio
measures how far training moved each reply, and ``beta`` is how strongly the loss holds the
policy near the reference (the objective is RLHF's "reward minus beta x KL to the reference",
solved in closed form). ``log pi(y | x)`` is the **sum** of the log-probabilities of the
reply's tokens (its ``<|im_end|>`` included) given the prompt and the reply so far: the
prompt's tokens and the padding count for nothing (their labels are -100).

At the start pi = pi_ref, so both rewards are 0 and the loss is log 2 = 0.693; it falls as
the margin grows. Logged per step (averaged over the pairs): ``reward_accuracy`` (the share
of pairs whose chosen reward is above the rejected one), ``reward_margin``, ``reward_chosen``,
``reward_rejected``, ``logp_chosen`` and ``logp_rejected`` (the policy's summed log-probs;
both often fall, the rejected faster), and ``nll_chosen`` (the chosen replies' negative
log-likelihood per token, below).

**Likelihood displacement, and the SFT term.** The DPO loss only sees the *difference* of the
two log-ratios, so it can widen the margin by pushing *both* replies down, the rejected one
faster: the preference accuracy rises while ``logp_chosen`` falls, and greedy decoding stops
producing the chosen answer (on the course's tasks: task accuracy 92% after SFT, 66% after
plain DPO with 93% preference accuracy). The standard remedy (RPO: Pang et al., 2024,
"Iterative Reasoning Preference Optimization"; TRL's ``loss_type=["sigmoid", "sft"]``, once
its ``rpo_alpha``) adds the SFT loss of the chosen replies::

    loss = dpo_loss + sft_weight * nll_chosen
    nll_chosen = -(sum of log pi over all chosen reply tokens of the micro-batch) / (their number)

a token-level mean over the micro-batch, exactly as TRL computes it. ``dpo: {sft_weight: 0.0}``
(the default) is plain DPO.

**The run.** The trainer of pretraining (:func:`llm_course.training.trainer.train`) with:

* the model of ``init_from`` (or ``model_config_path`` with random weights), and a frozen
  copy of it as the reference (``dpo: {reference: frozen}``), run under ``no_grad`` on the
  same rows (same device and precision as the policy);
* the preference data of :mod:`llm_course.data.dpo` (``next_batch(B)``: 2B rows, the B chosen
  then the B rejected), so ``batch_size`` counts **pairs**;
* :func:`make_dpo_loss_fn` as the loss and ``count_fn`` = the number of pairs, so micro-batches
  are weighted by pairs, not tokens.

At the end ``<out_dir>/model/`` holds the trained model (weights, tokenizer, chat template),
for ``llm-course chat --model``, ``llm-course generate --model`` or the next ``init_from``.
Exit status: 0 done, 1 stopped on NaN/inf, 130 interrupted, 2 a bad config or bad data.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The log-probability of each row's counted labels, summed: (B, T, V), (B, T) -> (B,) float32.

    ``labels`` are pre-shifted (``labels[b, t]`` is the token that follows position t) and -100
    where nothing is counted (the prompt, the padding). Computed in float32 whatever the logits' dtype.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"sequence_logprobs: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "must agree on (B, T)")  # fmt: skip
    mask = labels != IGNORE_INDEX  # (B, T)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    per_token = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (per_token * mask).sum(-1)  # (B,)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The sigmoid DPO loss (mean over pairs) and its metrics, from summed log-probs (P,) each.

    The reference log-probs are detached (no gradient reaches the reference). Metrics, 0-d
    float tensors without gradient: ``reward_accuracy``, ``reward_margin``, ``reward_chosen``,
    ``reward_rejected``, ``logp_chosen``, ``logp_rejected`` (means over the pairs).
    """
    chosen_reward = beta * (policy_chosen.float() - ref_chosen.detach().float())  # (P,)
    rejected_reward = beta * (policy_rejected.float() - ref_rejected.detach().float())  # (P,)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        metrics = {
            "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
            "reward_margin": margin.mean(),
            "reward_chosen": chosen_reward.mean(),
            "reward_rejected": rejected_reward.mean(),
            "logp_chosen": policy_chosen.float().mean(),
            "logp_rejected": policy_rejected.float().mean(),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def chosen_nll(policy_chosen: torch.Tensor, chosen_labels: torch.Tensor) -> torch.Tensor:
    """The SFT loss of the chosen replies: their summed log-probs (P,) over the number of their
    counted tokens (``chosen_labels`` (P, T) != -100), negated: a 0-d float32 tensor.

    A token-level mean over the whole micro-batch (TRL's ``"sft"`` loss type), not a mean of
    per-reply means: a long reply weighs more than a short one, as in SFT.
    """
    n_tokens = (chosen_labels != IGNORE_INDEX).sum().clamp(min=1)
    return -policy_chosen.float().sum() / n_tokens


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that never trains: eval mode (no dropout), no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def make_dpo_loss_fn(reference: torch.nn.Module, beta: float, sft_weight: float = 0.0):
    """The trainer's ``loss_fn`` for DPO: rows ``[chosen (P); rejected (P)]`` -> ``(loss, metrics)``.

    The policy (the model the trainer passes, maybe DDP-wrapped) runs on all 2P rows at once;
    the frozen ``reference`` on the same rows under ``no_grad`` (moved to their device on first use).
    ``sft_weight`` > 0 adds ``sft_weight * nll_chosen`` (:func:`chosen_nll`) to the DPO loss;
    ``nll_chosen`` is logged whatever the weight.
    """

    def loss_fn(model, input_ids: torch.Tensor, labels: torch.Tensor):
        if input_ids.shape[0] % 2:
            raise ValueError(f"dpo loss: {input_ids.shape[0]} rows; expected 2P (P chosen rows, then P rejected)")
        P = input_ids.shape[0] // 2
        logps = sequence_logprobs(model(input_ids), labels)  # (2P,)
        if next(reference.parameters()).device != input_ids.device:
            reference.to(input_ids.device)
        with torch.no_grad():
            ref_logps = sequence_logprobs(reference(input_ids), labels)  # (2P,)
        loss, metrics = dpo_loss(logps[:P], logps[P:], ref_logps[:P], ref_logps[P:], beta)
        nll = chosen_nll(logps[:P], labels[:P])
        metrics["nll_chosen"] = nll.detach()
        if sft_weight:
            loss = loss + sft_weight * nll
        return loss, metrics

    return loss_fn


def count_pairs(labels: torch.Tensor) -> int:
    """``count_fn`` of DPO: a micro-batch of 2P rows averages over P pairs."""
    return labels.shape[0] // 2


def build_data(cfg, model, tokenizer_folder, info):
    """The preference data of ``cfg.data`` for this rank (:func:`llm_course.data.dpo.build_dpo_data`)."""
    from llm_course.data.dpo import build_dpo_data
    from llm_course.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer of {tokenizer_folder} has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size={model.config.vocab_size}: they do not belong together")  # fmt: skip
    block_size = cfg.block_size or model.config.block_size
    return build_dpo_data(cfg.data, tokenizer, block_size, rank=info.rank, world_size=info.world_size, seed=cfg.seed,
                          folder=tokenizer_folder)  # fmt: skip


def train_dpo(cfg, *, resume="auto", info=None, print_fn=print):
    """Run (or resume) the DPO run ``cfg`` describes and export its model; returns the TrainResult
    (``result.model_dir``: the exported folder, or None when the run did not finish)."""
    from llm_course.training import distributed as D
    from llm_course.training.config import DPOConfig
    from llm_course.training.export import tokenizer_folder_of
    from llm_course.training.sft import build_start_model, export_final_model
    from llm_course.training.trainer import train

    dpo = cfg.dpo or DPOConfig()
    info = info or D.init_distributed(cfg.device)
    tokenizer_folder = tokenizer_folder_of(cfg.init_from)
    model = build_start_model(cfg)  # a resumed run loads its checkpoint into it; the reference stays the start
    reference = frozen_copy(model)
    data = build_data(cfg, model, tokenizer_folder, info)
    if info.is_main:
        print_fn(f"DPO: {len(data.source.pairs) if hasattr(data.source, 'pairs') else 'streamed'} training pairs "
                 f"({data.truncated} truncated), {len(data.val_pairs)} held out; beta={dpo.beta}, "
                 f"sft_weight={dpo.sft_weight}, "
                 f"reference: a frozen copy of {cfg.init_from or cfg.model_config_path}")  # fmt: skip
    loss_fn = make_dpo_loss_fn(reference, dpo.beta, dpo.sft_weight)
    result = train(cfg, model=model, data=data, loss_fn=loss_fn, count_fn=count_pairs, resume=resume, info=info,
                   print_fn=print_fn)  # fmt: skip
    result.model_dir = None
    if result.stopped == "done" and info.is_main:
        result.model_dir = export_final_model(result, cfg, tokenizer_folder)
        if result.model_dir is not None:
            print_fn(f"saved the DPO model to {result.model_dir} (llm-course chat --model {result.model_dir})")
    D.barrier(info)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llm_course.training.pretrain import add_arguments as pretrain_arguments

    pretrain_arguments(p)  # --config, --set, --no-resume, --resume-from: the same as pretraining


def run(args) -> int:
    from llm_course.training.pretrain import run_command

    return run_command(args, train_dpo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course dpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
