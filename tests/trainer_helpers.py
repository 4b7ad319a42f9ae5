"""Shared pieces of the trainer tests: a tiny model and a synthetic data source with a position."""

from __future__ import annotations

import dataclasses

import torch

from llm_course.models import AutoModelForCausalLM
from llm_course.models.config import load_model_config
from llm_course.training.config import TrainConfig

VOCAB, T = 96, 16


def tiny_model(seed: int = 0, dropout: float = 0.0):
    """A 2-layer GPT-2 small enough for many steps per second on a CPU."""
    base = load_model_config("gpt2-tiny")
    cfg = dataclasses.replace(base, vocab_size=VOCAB, block_size=T, n_embd=32, n_head=2,
                              embd_pdrop=dropout, resid_pdrop=dropout, attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


class SyntheticData:
    """Row i of an endless stream is drawn from a generator seeded by (seed, i); rank r of
    world_size reads rows r, r + world_size, ... Some labels are -100 (a varying number per
    row), so micro-batches hold different numbers of real tokens."""

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1, mask: bool = True):
        self.seed, self.rank, self.world_size, self.mask = seed, rank, world_size, mask
        self.cursor = 0  # rows of this rank returned so far

    def _row(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        ids = torch.randint(0, VOCAB, (T + 1,), generator=g)
        x, y = ids[:-1].clone(), ids[1:].clone()
        if self.mask:
            n_masked = int(torch.randint(0, T - 1, (1,), generator=g))
            y[:n_masked] = -100
        return x, y

    def next_batch(self, batch_size: int):
        rows = [self._row((self.cursor + k) * self.world_size + self.rank) for k in range(batch_size)]
        self.cursor += batch_size
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def val_batches(self, n: int, batch_size: int):
        for b in range(n):
            rows = [self._row(-1 - (b * batch_size + k)) for k in range(batch_size)]
            yield torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def state_dict(self):
        return {"cursor": self.cursor}

    def load_state_dict(self, state):
        self.cursor = state["cursor"]


def tiny_config(out_dir, **overrides) -> TrainConfig:
    d = dict(model_config_path="gpt2-tiny", data={"type": "local", "path": "unused"}, max_steps=4, batch_size=4,
             log_every=1, eval_every=0, eval_batches=1, out_dir=str(out_dir), device="cpu", grad_clip=1.0,
             optimizer={"lr": 3e-3, "weight_decay": 0.1}, schedule={"warmup_steps": 2, "min_lr": 3e-4})  # fmt: skip
    d.update(overrides)
    return TrainConfig.from_dict(d, source="test")


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str, result_file: str) -> None:
    """One rank of a gloo DDP run on the CPU (started by torch.multiprocessing.spawn)."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from llm_course.training import distributed as D
    from llm_course.training.trainer import train

    info = D.init_distributed("cpu")
    try:
        cfg = tiny_config(out_dir, max_steps=2, batch_size=2, grad_accum_steps=2, save_every=2, eval_every=2)
        model = tiny_model()
        r = train(cfg, model=model, data=SyntheticData(rank=rank, world_size=world_size), info=info,
                  print_fn=lambda *a, **k: None)  # fmt: skip
        if rank == 0:
            torch.save({"history": r.history, "val_loss": r.val_loss, "weights": model.state_dict()}, result_file)
    finally:
        D.cleanup(info)
