"""Sharded data parallel (FSDP2, ``parallelism: fsdp``).

On the CPU: 2 processes (gloo) with ``fully_shard`` and 2 x 2 sequences per micro-batch take
the same steps as one unsharded process with 4 sequences (torch 2.14 runs FSDP2 on gloo):
same losses and gradient norms step for step (rel. 1e-5: only the order of float sums
differs), and the checkpoint they write holds the full model and optimizer state, equal to
the one-process run's. On GPUs (marked ``gpu``): the same with NCCL on 2 GPUs, and the
FSDP building blocks in bf16 on one GPU.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm_course.training import checkpoint as ckpt
from llm_course.training.trainer import make_optimizer, train
from tests.trainer_helpers import SyntheticData, tiny_config, tiny_model

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet(*args, **kwargs):
    pass


def fsdp_worker(rank: int, world_size: int, port: int, out_dir: str, result_file: str, device: str,
                precision: str) -> None:  # fmt: skip
    """One rank of an FSDP run (started by torch.multiprocessing.spawn)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from llm_course.training import distributed as D

    info = D.init_distributed(device)
    try:
        cfg = tiny_config(out_dir, max_steps=STEPS, batch_size=2, grad_accum_steps=2, eval_every=STEPS,
                          parallelism="fsdp", precision=precision, device=device)  # fmt: skip
        model = tiny_model()
        r = train(cfg, model=model, data=SyntheticData(rank=rank, world_size=world_size), info=info, print_fn=quiet)
        assert D.is_sharded(model) and type(model.lm_head.weight).__name__ == "DTensor"
        assert model.lm_head.weight is model.transformer.wte.weight  # still tied after sharding
        if rank == 0:
            torch.save({"history": r.history, "val_loss": r.val_loss}, result_file)
    finally:
        D.cleanup(info)


def _one_process(tmp_path, precision="fp32", device="cpu"):
    model = tiny_model()
    cfg = tiny_config(tmp_path / "one", max_steps=STEPS, batch_size=4, grad_accum_steps=2, eval_every=STEPS,
                      precision=precision, device=device, parallelism="fsdp")  # one process: no wrapping # fmt: skip
    return model, train(cfg, model=model, data=SyntheticData(), print_fn=quiet)


def _check_same_run(tmp_path, result, one_model, one, rel=1e-5, atol=1e-5):
    assert len(result["history"]) == len(one.history) == STEPS
    for a, b in zip(result["history"], one.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=rel)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=rel * 10)
    # the checkpoint of the sharded run holds the full model and optimizer state
    sharded_ckpt = ckpt.latest_checkpoint(tmp_path / "fsdp" / "checkpoints")
    fresh, reference = tiny_model(seed=1), tiny_model(seed=2)
    opt_sharded = make_optimizer(fresh, tiny_config(tmp_path), torch.device("cpu"))
    state = ckpt.load_checkpoint(sharded_ckpt, model=fresh, optimizer=opt_sharded)
    assert state["step"] == STEPS and len(state["rng"]) == 2
    for k, v in one_model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=1e-4, atol=atol)
    opt_one = make_optimizer(reference, tiny_config(tmp_path), torch.device("cpu"))
    ckpt.load_checkpoint(one.last_checkpoint, model=reference, optimizer=opt_one)
    a, b = opt_sharded.state_dict(), opt_one.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(a["state"][i][key], b["state"][i][key], rtol=1e-4, atol=1e-7)


def test_parallelism_key_is_checked(tmp_path):
    assert tiny_config(tmp_path).parallelism == "ddp"
    with pytest.raises(ValueError, match="parallelism='zero3' must be one of ddp, fsdp"):
        tiny_config(tmp_path, parallelism="zero3")


def test_fsdp_rejects_fp16():
    from llm_course.training.distributed import shard_model

    with pytest.raises(ValueError, match="fp16.*bf16"):
        shard_model(tiny_model(), "fp16")


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    result_file = tmp_path / "fsdp.pt"
    mp.spawn(fsdp_worker, args=(2, _free_port(), str(tmp_path / "fsdp"), str(result_file), "cpu", "fp32"),
             nprocs=2, join=True)  # fmt: skip
    result = torch.load(result_file, weights_only=False)
    one_model, one = _one_process(tmp_path)
    assert result["val_loss"] is not None
    _check_same_run(tmp_path, result, one_model, one)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp_two_gpus_equal_one(tmp_path, precision):
    """NCCL on 2 GPUs. bf16 (blocks computed in bf16, reductions in fp32) is compared with a
    looser tolerance: a sharded reduction rounds differently from one process's."""
    result_file = tmp_path / "fsdp.pt"
    mp.spawn(fsdp_worker, args=(2, _free_port(), str(tmp_path / "fsdp"), str(result_file), "cuda", precision),
             nprocs=2, join=True)  # fmt: skip
    result = torch.load(result_file, weights_only=False)
    one_model, one = _one_process(tmp_path, precision, "cuda")
    rel, atol = (1e-4, 1e-4) if precision == "fp32" else (2e-2, 2e-2)
    _check_same_run(tmp_path, result, one_model.cpu(), one, rel=rel, atol=atol)


@pytest.mark.gpu
def test_fsdp_building_blocks_on_one_gpu(tmp_path):
    """A world of one GPU (NCCL): sharded bf16 model, fused AdamW on DTensors, clip_grad_norm_ of
    DTensor gradients, and the full state gathered for a checkpoint equal to the model's own."""
    from llm_course.training import distributed as D

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        device = torch.device("cuda", 0)
        plain, model = tiny_model().to(device), tiny_model().to(device)
        D.shard_model(model, "bf16")
        cfg = tiny_config(tmp_path, device="cuda", precision="bf16", parallelism="fsdp")
        opt, opt_plain = make_optimizer(model, cfg, device), make_optimizer(plain, cfg, device)
        x = torch.randint(0, 96, (2, 16), device=device)
        for m, o in ((model, opt), (plain, opt_plain)):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                m(x).float().logsumexp(-1).mean().backward()
            norm = D.to_local_scalar(torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0))
            assert torch.isfinite(norm)
            o.step()
        model_state, opt_state = ckpt.full_state_dicts(model, opt)
        for k, v in plain.state_dict().items():
            torch.testing.assert_close(model_state[k], v.cpu(), rtol=2e-2, atol=2e-2)
        assert opt_state["state"].keys() == opt_plain.state_dict()["state"].keys()
    finally:
        dist.destroy_process_group()
