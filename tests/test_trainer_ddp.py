"""Data parallelism: 2 processes (gloo, CPU) with 2 x 2 sequences per micro-batch take the same
steps as one process with 4 sequences: same losses, same weights (up to float rounding)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm_course.training.trainer import train
from tests.trainer_helpers import SyntheticData, ddp_worker, tiny_config, tiny_model

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    result_file = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(result_file)), nprocs=2, join=True)
    ddp = torch.load(result_file, weights_only=False)

    model = tiny_model()
    cfg = tiny_config(tmp_path / "one", max_steps=2, batch_size=4, grad_accum_steps=2, eval_every=2)
    one = train(cfg, model=model, data=SyntheticData(), print_fn=lambda *a, **k: None)

    assert len(ddp["history"]) == len(one.history) == 2
    for a, b in zip(ddp["history"], one.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert ddp["val_loss"] is not None  # (each rank evaluated batches of 2, not 4: a different val set)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp["weights"][k], v, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "ddp" / "checkpoints" / "latest").is_file()  # rank 0 saved
