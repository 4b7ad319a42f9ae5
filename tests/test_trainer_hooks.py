"""The trainer's two hooks for fine-tuning losses: a ``loss_fn`` that returns ``(loss, metrics)``
(each metric averaged over the step with the loss's weights and logged to the history and the
CSV) and ``count_fn`` (what a micro-batch's mean averages over: its weight in the step)."""

from __future__ import annotations

import csv

import torch
import torch.nn.functional as F

from llm_course.training.trainer import train
from tests.trainer_helpers import SyntheticData, tiny_config, tiny_model


def quiet(*args, **kwargs):
    pass


def row_mean_loss(model, x, y):
    """The mean over rows of each row's mean token loss: a loss whose unit is the row (like DPO's pair)."""
    logits = model(x).float()  # (B, T, V)
    per_token = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")  # (B, T)
    n = (y != -100).sum(1).clamp(min=1)
    return (per_token.sum(1) / n).mean()


def rows(labels):
    return labels.shape[0]


def test_count_fn_weights_micro_batches(tmp_path):
    """With count_fn = rows, 2 micro-batches of 2 rows give the step of one batch of 4 rows.
    With the default (token) weights they do not: the rows hold different numbers of tokens."""
    models = [tiny_model() for _ in range(3)]
    kw = dict(max_steps=1, grad_clip=None, eval_every=0)
    train(tiny_config(tmp_path / "a", batch_size=4, grad_accum_steps=1, **kw), model=models[0], data=SyntheticData(),
          loss_fn=row_mean_loss, count_fn=rows, resume=False, print_fn=quiet)  # fmt: skip
    train(tiny_config(tmp_path / "b", batch_size=2, grad_accum_steps=2, **kw), model=models[1], data=SyntheticData(),
          loss_fn=row_mean_loss, count_fn=rows, resume=False, print_fn=quiet)  # fmt: skip
    train(tiny_config(tmp_path / "c", batch_size=2, grad_accum_steps=2, **kw), model=models[2], data=SyntheticData(),
          loss_fn=row_mean_loss, resume=False, print_fn=quiet)  # fmt: skip
    a, b, c = (dict(m.named_parameters()) for m in models)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=f"{name}: count_fn=rows")
    assert any(not torch.allclose(a[n], c[n], atol=1e-6, rtol=1e-5) for n in a), "token weights should differ"


def test_metrics_are_weighted_averages_logged_to_history_and_csv(tmp_path):
    """Each metric of a step = sum over micro-batches of count * metric / sum of counts; the CSV grows
    a column per metric (and val_<name> at evaluation); a resumed run keeps appending under it."""
    calls = []  # (count, metric) per training micro-batch, in order

    def weird_count(labels):  # a different weight for every micro-batch
        return int(labels[:, -1].remainder(5).sum()) + 1

    def loss_fn(model, x, y):
        loss = row_mean_loss(model, x, y)
        m = y.float().clamp(min=0).mean()  # any number that differs between micro-batches
        if model.training:
            calls.append((weird_count(y), m.item()))
        return loss, {"m": m, "double_loss": 2 * loss.detach()}

    cfg = tiny_config(tmp_path, max_steps=2, batch_size=2, grad_accum_steps=3, eval_every=2, save_every=2)
    r = train(cfg, model=tiny_model(), data=SyntheticData(), loss_fn=loss_fn, count_fn=weird_count, resume=False,
              print_fn=quiet)  # fmt: skip
    assert len(calls) == 6
    for step in range(2):
        chunk = calls[3 * step : 3 * step + 3]
        expected = sum(c * m for c, m in chunk) / sum(c for c, _ in chunk)
        h = r.history[step]
        assert abs(h["m"] - expected) < 1e-5, (step, h["m"], expected)
        assert abs(h["double_loss"] - 2 * h["loss"]) < 1e-5  # weighted with the loss's weights
    assert set(r.val_metrics) == {"m", "double_loss"}

    # resume for two more steps: the CSV keeps one header with the metric columns
    cfg2 = tiny_config(tmp_path, max_steps=4, batch_size=2, grad_accum_steps=3, eval_every=2, save_every=2)
    r2 = train(cfg2, model=tiny_model(), data=SyntheticData(), loss_fn=loss_fn, count_fn=weird_count, resume="auto",
               print_fn=quiet)  # fmt: skip
    with (tmp_path / "log.csv").open(newline="") as f:
        rows_ = list(csv.DictReader(f))
        f.seek(0)
        header = next(csv.reader(f))
    assert {"m", "double_loss", "val_m", "val_double_loss", "loss", "val_loss"} <= set(header)
    train_rows = [x for x in rows_ if x["loss"]]
    assert [int(x["step"]) for x in train_rows] == [1, 2, 3, 4]
    logged = {int(x["step"]): float(x["m"]) for x in train_rows}
    for h in r.history + r2.history:
        assert abs(logged[h["step"]] - h["m"]) < 1e-6
    val_rows = [x for x in rows_ if x["val_loss"]]
    assert [int(x["step"]) for x in val_rows] == [2, 4] and all(x["val_m"] for x in val_rows)


def test_a_plain_loss_still_logs_the_old_columns(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2)
    train(cfg, model=tiny_model(), data=SyntheticData(), resume=False, print_fn=quiet)
    with (tmp_path / "log.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_ppl", "elapsed_s"]
