"""DPO: sequence log-probs over reply tokens only, the loss and its metrics against TRL's
DPOTrainer (its own loss code and log-prob path, called directly: no trainer is built, nothing
is downloaded), and a tiny end-to-end ``llm-course dpo`` run on the CPU that learns and resumes."""

from __future__ import annotations

import collections
import csv
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llm_course.training.config import load_train_config
from llm_course.training.dpo import chosen_nll, dpo_loss, frozen_copy, make_dpo_loss_fn, sequence_logprobs


def _pairs(P: int, T: int, V: int, seed: int):
    """Random rows of token ids (2P, T+1) and a reply mask that starts after a prompt of random length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2 * P, T + 1), generator=g)
    start = torch.randint(1, T // 2, (2 * P, 1), generator=g)
    end = torch.randint(T // 2 + 1, T + 2, (2 * P, 1), generator=g)  # padding after `end`
    pos = torch.arange(T + 1)
    reply = (pos >= start) & (pos < end)  # (2P, T+1): token j belongs to the reply
    labels = torch.where(reply[:, 1:], ids[:, 1:], -100)  # the course's pre-shifted labels (2P, T)
    return ids, reply, labels, g


# --- sequence_logprobs ---------------------------------------------------------------------------


def test_sequence_logprobs_counts_reply_tokens_only():
    ids, reply, labels, g = _pairs(3, 9, 13, seed=1)
    logits = torch.randn(6, 9, 13, generator=g, dtype=torch.float64)
    expected = torch.zeros(6, dtype=torch.float64)
    for b in range(6):  # plain loops: position t predicts token t + 1
        for t in range(9):
            if reply[b, t + 1]:
                expected[b] += logits[b, t].log_softmax(-1)[ids[b, t + 1]]
    got = sequence_logprobs(logits, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    # changing a logit at a prompt or padding position changes nothing
    ignored = labels == -100
    logits2 = logits.clone()
    logits2[ignored] += 100 * torch.randn(int(ignored.sum()), 13, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sequence_logprobs(logits2, labels), got)


def test_sequence_logprobs_shape_error():
    with pytest.raises(ValueError, match=r"sequence_logprobs.*\(2, 5, 7\).*\(2, 4\)"):
        sequence_logprobs(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


# --- the loss -------------------------------------------------------------------------------------


def test_dpo_loss_formula_gradients_and_metrics():
    g = torch.Generator().manual_seed(2)
    pc, pr = (torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rc, rr = (torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    beta = 0.25
    loss, m = dpo_loss(pc, pr, rc, rr, beta)
    z = beta * ((pc - rc) - (pr - rr)).detach()
    torch.testing.assert_close(loss.double(), torch.log1p(torch.exp(-z)).mean(), atol=1e-6, rtol=1e-6)
    loss.backward()
    assert rc.grad is None and rr.grad is None  # the reference gets no gradient
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-z) / 5, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pr.grad, beta * torch.sigmoid(-z) / 5, atol=1e-6, rtol=1e-6)
    assert m["reward_accuracy"].item() == pytest.approx(float((z > 0).double().mean()))
    assert m["reward_margin"].item() == pytest.approx(float(z.mean()), abs=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    # at the start (policy = reference) the loss is log 2 and no pair is "won"
    loss0, m0 = dpo_loss(pc, pr, pc, pr, beta)
    assert loss0.item() == pytest.approx(math.log(2)) and m0["reward_accuracy"].item() == 0.0


def test_loss_fn_runs_policy_and_frozen_reference():
    from llm_course.models import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_name("qwen2-tiny")
    reference = frozen_copy(model)
    ids, _, labels, _ = _pairs(2, 12, 200, seed=3)
    loss, m = make_dpo_loss_fn(reference, 0.1)(model, ids[:, :-1], labels)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    loss.backward()
    assert all(p.grad is None for p in reference.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="expected 2P"):
        make_dpo_loss_fn(reference, 0.1)(model, ids[:3, :-1], labels[:3])


# --- against TRL ----------------------------------------------------------------------------------


def _trl_stub(model, beta, sft_weight=None):
    """The attributes DPOTrainer._compute_loss reads, for the plain sigmoid loss with precomputed
    reference log-probs, on one process (accelerate's gathers are the identity there).
    ``sft_weight``: add TRL's "sft" loss type with that weight (RPO, once ``rpo_alpha``)."""
    acc = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    types_, weights = (["sigmoid"], [1.0]) if sft_weight is None else (["sigmoid", "sft"], [1.0, sft_weight])
    return types.SimpleNamespace(
        model=model, accelerator=acc, beta=beta, loss_types=types_, loss_weights=weights, ld_alpha=None,
        f_divergence_type="reverse_kl", precompute_ref_logps=True, aux_loss_enabled=False, use_weighting=False,
        rpo_alpha=None, _tp_size=1, _total_train_tokens=0, args=types.SimpleNamespace(),
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
    )  # fmt: skip


def test_logprobs_match_trl_selective_log_softmax():
    pytest.importorskip("trl")
    from trl.trainer.utils import selective_log_softmax

    ids, reply, labels, g = _pairs(4, 10, 17, seed=4)
    logits = torch.randn(8, 10, 17, generator=g)
    theirs = (selective_log_softmax(logits, ids[:, 1:]) * reply[:, 1:]).sum(1)  # TRL: token t+1 from logits t
    torch.testing.assert_close(sequence_logprobs(logits, labels), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_loss_and_metrics_match_trl_dpo_trainer(beta):
    """TRL's DPOTrainer computes its loss (and log-probs, through its fused LM head) on a tiny
    transformers Qwen2; ours runs on the same model's logits with the course's shifted labels."""
    pytest.importorskip("trl")
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    V, P, T = 64, 3, 12
    torch.manual_seed(5)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))  # fmt: skip
    hf.train()  # no dropout in Qwen2: training mode only selects TRL's "train" metrics
    ids, reply, labels, g = _pairs(P, T, V, seed=6)
    ref = torch.randn(2 * P, generator=g) * 3 - 20  # reference log-probs (precomputed, as TRL allows)
    with torch.no_grad():
        ours_logps = sequence_logprobs(hf(ids).logits[:, :-1], labels)  # logits of positions 0..T-1
    ours, m = dpo_loss(ours_logps[:P], ours_logps[P:], ref[:P], ref[P:], beta)

    add_fused_lm_head(hf, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    stub = _trl_stub(hf, beta)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": reply.long(),
              "ref_chosen_logps": ref[:P], "ref_rejected_logps": ref[P:]}  # fmt: skip
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(stub, hf, inputs, False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    tm = stub._metrics["train"]
    for mine, key in [("reward_accuracy", "rewards/accuracies"), ("reward_margin", "rewards/margins"),
                      ("reward_chosen", "rewards/chosen"), ("reward_rejected", "rewards/rejected"),
                      ("logp_chosen", "logps/chosen"), ("logp_rejected", "logps/rejected")]:  # fmt: skip
        assert m[mine].item() == pytest.approx(tm[key][-1], abs=1e-4, rel=1e-5), mine


def test_sft_term_matches_trl_sft_loss_type():
    """DPO + sft_weight * nll_chosen equals TRL's ``loss_type=["sigmoid", "sft"]``,
    ``loss_weights=[1, sft_weight]`` on the same model and rows (replies of different lengths, so a
    mean of per-reply means would differ from TRL's token-level mean); the course's loss_fn gives
    the same loss and logs nll_chosen; sft_weight=0 is the plain DPO loss."""
    pytest.importorskip("trl")
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    V, P, T, beta, w = 64, 3, 12, 0.1, 0.7
    torch.manual_seed(7)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.5)  # fmt: skip  (large weights: token log-probs far from uniform)
    hf = Qwen2ForCausalLM(cfg)
    hf.train()
    ids, reply, labels, g = _pairs(P, T, V, seed=8)
    lengths = (labels[:P] != -100).sum(1)
    assert len(set(lengths.tolist())) > 1  # the two normalizations differ on these rows
    ref = torch.randn(2 * P, generator=g) * 3 - 20

    class Course(torch.nn.Module):  # the course's loss_fn calls model(ids) -> logits
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).logits

    with torch.no_grad():
        logps = sequence_logprobs(hf(ids).logits[:, :-1], labels)
        plain, _ = dpo_loss(logps[:P], logps[P:], ref[:P], ref[P:], beta)
        nll = chosen_nll(logps[:P], labels[:P])
        # through the course's loss_fn: the reference is the same model, so check against ref = logps
        policy, reference = Course(hf), frozen_copy(Course(hf))
        fn_loss, fn_m = make_dpo_loss_fn(reference, beta, sft_weight=w)(policy, ids[:, :-1], labels)
        fn_plain, fn_m0 = make_dpo_loss_fn(reference, beta)(policy, ids[:, :-1], labels)
    torch.testing.assert_close(fn_loss, torch.tensor(math.log(2)) + w * nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fn_plain, torch.tensor(math.log(2)), atol=1e-5, rtol=1e-5)  # sft_weight=0: plain DPO
    assert fn_m["nll_chosen"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert fn_m0["nll_chosen"].item() == pytest.approx(nll.item(), rel=1e-5)  # logged whatever the weight
    mean_of_means = (-logps[:P] / lengths).mean()
    assert abs(nll.item() - mean_of_means.item()) > 1e-2  # far beyond the 1e-5 tolerance below

    add_fused_lm_head(hf, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": reply.long(),
              "ref_chosen_logps": ref[:P], "ref_rejected_logps": ref[P:]}  # fmt: skip
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(_trl_stub(hf, beta, sft_weight=w), hf, inputs, False)
        theirs_plain = DPOTrainer._compute_loss(_trl_stub(hf, beta), hf, inputs, False)
    torch.testing.assert_close(plain + w * nll, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, theirs_plain, atol=1e-5, rtol=1e-5)


def test_sft_weight_config_and_set_override(tmp_path):
    """``dpo.sft_weight`` defaults to 0, is read from ``--set dpo.sft_weight=...`` (a nested key,
    the rest of the dpo block kept), and a bad value or a misspelled key is an error naming it."""
    from llm_course.training.pretrain import _overrides

    assert load_train_config("dpo-tiny-cpu").dpo.sft_weight == 0.0
    base = load_train_config("dpo-tiny-cpu").dpo
    cfg = load_train_config("dpo-tiny-cpu", overrides=_overrides(["dpo.sft_weight=1.5", "dpo.beta=0.3"]))
    assert cfg.dpo.sft_weight == 1.5 and cfg.dpo.beta == 0.3 and cfg.dpo.reference == base.reference
    with pytest.raises(ValueError, match=r"dpo\.sft_weight=-1"):
        load_train_config("dpo-tiny-cpu", overrides=_overrides(["dpo.sft_weight=-1"]))
    with pytest.raises(ValueError, match=r"unknown key 'dpo\.sft_wieght'"):
        load_train_config("dpo-tiny-cpu", overrides=_overrides(["dpo.sft_wieght=1"]))


# --- end to end -----------------------------------------------------------------------------------


def _cfg(tmp_path, **overrides):
    return load_train_config("dpo-tiny-cpu", overrides={"out_dir": str(tmp_path / "run"), "eval_batches": 1,
                                                        "log_every": 1, **overrides})  # fmt: skip


def _quiet(*a, **k):
    pass


def test_dpo_tiny_run_learns_resumes_and_exports(tmp_path):
    """A few steps on 8 training pairs: the loss falls below log 2 and the reward accuracy on them
    rises; a run resumed half-way gives the same losses; the model folder is written."""
    from llm_course.training.dpo import train_dpo

    lines = (Path(__file__).resolve().parent.parent / "data" / "sample_dpo.jsonl").read_text().splitlines()
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines[:10]) + "\n")  # 8 training pairs + 2 held out
    over = dict(max_steps=10, batch_size=4, eval_every=0, save_every=5, block_size=48, dpo={"beta": 0.5},
                data={"type": "local", "path": str(tmp_path / "pairs.jsonl"), "val_fraction": 0.2},
                optimizer={"lr": 3e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 1, "min_lr": 1e-3, "decay_steps": 10})  # fmt: skip
    full = train_dpo(_cfg(tmp_path / "a", **over), resume=False, print_fn=_quiet)
    losses = [x["loss"] for x in full.history]
    accs = [x["reward_accuracy"] for x in full.history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert sum(losses[-3:]) / 3 < math.log(2) - 0.1, losses
    assert accs[0] == 0.0 and sum(accs[-3:]) / 3 >= 0.75, accs
    assert (full.out_dir / "model" / "config.json").is_file() and (full.out_dir / "model" / "tokenizer.json").is_file()
    with (full.out_dir / "log.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert {"reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected", "val_reward_accuracy"} <= set(header)

    # the same run in two halves: 5 steps, then resume to 10
    half = train_dpo(_cfg(tmp_path / "b", **{**over, "max_steps": 5}), resume=False, print_fn=_quiet)
    rest = train_dpo(_cfg(tmp_path / "b", **over), resume="auto", print_fn=_quiet)
    assert [x["loss"] for x in half.history + rest.history] == pytest.approx(losses, abs=1e-5)


def test_dpo_command_bad_config(tmp_path, capsys):
    from llm_course.training.dpo import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_config_path: qwen2-tiny\ndata: {type: local, path: x}\nmax_steps: 1\ndpo: {betta: 0.1}\n")
    assert main(["--config", str(bad)]) == 2
    assert "unknown key 'dpo.betta'" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"model_config_path: qwen2-tiny\ndata: {{type: local, path: {tmp_path}/none.jsonl}}\n"
                       f"max_steps: 1\ndevice: cpu\nout_dir: {tmp_path}/run\n")  # fmt: skip
    assert main(["--config", str(missing)]) == 2
    assert "none.jsonl" in capsys.readouterr().err
