"""Profile whole training steps: forward, loss, backward, clipping, ``optimizer.step()``.

    from llm_course.profiling import profile_training_step

    prof = profile_training_step("gpt2-124m", backend="triton", steps=3, out_dir="profiles/triton")
    print(prof.report())          # the top kernels, time by category, ops on the roofline
    # profiles/triton/: kernels.csv, categories.csv, ops.csv, summary.json, trace.json,
    #                   categories.png, roofline.png

What runs: the model of a train config (``configs/train/<name>.yaml``: its model, batch
size, sequence length, micro-batches per step, gradient clipping, optimizer) or of a
model config (``configs/model/<name>.yaml``, with a batch of 8 sequences of the model's
context), on random tokens, under the chosen backend (``use_backend``), in bf16 autocast
on a GPU (fp32 on the CPU). ``warmup`` steps first, unprofiled (Triton compiles and tunes
its kernels then, the allocator grows its pools), then ``steps`` steps under
``torch.profiler`` with every course op marked (``annotate.py``). The model runs eager:
a config's ``compile: true`` is ignored, because the point is to see each op's kernels.

What comes out (:class:`StepProfile`): the tables of ``tables.py``, the wall time of the
profiled steps (the profiler adds a little host time; ``wall_unprofiled_ms`` is the same
steps timed without it), the device's busy time, and the roofline ceilings the points are
placed against: measured here by default (``llm_course.measure.measure_ceilings``).
"""

from __future__ import annotations

import math
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import Module

from llm_course.device import get_device, is_gpu, synchronize
from llm_course.measure.roofline import Ceilings
from llm_course.profiling.tables import CategoryRow, KernelRow, OpRow, category_rows, kernel_rows, op_rows


@dataclass
class StepProfile:
    """Everything one profile found; :mod:`llm_course.profiling.report` writes and prints it."""

    model: str
    backend: str
    device: str
    time_kind: str  # "device" (GPU kernels) or "cpu" (CPU ops)
    batch_size: int
    seq_len: int
    micro_batches: int
    precision: str
    steps: int
    wall_ms: float  # per step, profiled
    wall_unprofiled_ms: float  # per step, the same steps without the profiler
    busy_ms: float  # per step, the device busy (union of kernel intervals); CPU: summed op self time
    kernels: list[KernelRow] = field(default_factory=list)
    categories: list[CategoryRow] = field(default_factory=list)
    ops: list[OpRow] = field(default_factory=list)
    ceilings: Ceilings | None = None
    no_estimate_share: float = 0.0  # share of kernel time with no FLOPs estimate
    unmatched_ranges: int = 0
    loss: float = math.nan  # of the last profiled step
    trace_path: Path | None = None
    files: dict[str, str] = field(default_factory=dict)

    def report(self, top_k: int = 15) -> str:
        from llm_course.profiling.report import format_profile

        return format_profile(self, top_k)

    def limits(self) -> str:
        from llm_course.profiling.report import limits_line

        return limits_line(self)


def _build(config, backend: str | None, batch_size, seq_len, micro_batches, device):
    """(model, name, backend, batch, seq, micro-batches, grad_clip, optimizer config) from a config or model."""
    from llm_course.models import AutoModelForCausalLM
    from llm_course.training.config import OptimizerConfig, load_train_config, resolve_config_path

    opt_cfg, clip = OptimizerConfig(), 1.0
    if isinstance(config, Module):
        model, name = config, type(config).__name__
        default_batch, default_seq, default_micro = 8, getattr(getattr(model, "config", None), "block_size", 128), 1
    else:
        train_cfg = config if hasattr(config, "model_config_path") else None  # a TrainConfig already loaded
        if train_cfg is None:
            try:
                train_cfg = load_train_config(resolve_config_path(config))
            except FileNotFoundError:
                pass
        torch.manual_seed(0)
        if train_cfg is not None:
            model = AutoModelForCausalLM.from_name(train_cfg.model_config_path)
            name = str(config) if isinstance(config, (str, Path)) else train_cfg.model_config_path
            default_batch, default_micro = train_cfg.batch_size, train_cfg.grad_accum_steps
            default_seq = train_cfg.block_size or model.config.block_size
            opt_cfg, clip = train_cfg.optimizer, train_cfg.grad_clip
            backend = backend or train_cfg.backend
        else:
            try:
                model = AutoModelForCausalLM.from_name(str(config))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"profile: {config!r} is neither a train config (configs/train) nor a model "
                                        f"config (configs/model): {e}") from e  # fmt: skip
            name, default_batch, default_seq, default_micro = str(config), 8, model.config.block_size, 1
    model = model.to(device).train()
    return (model, name, backend or "torch", batch_size or default_batch, seq_len or default_seq,
            micro_batches or default_micro, clip, opt_cfg)  # fmt: skip


def profile_training_step(
    config: str | Path | Module = "gpt2-tiny",
    backend: str | None = None,
    *,
    steps: int = 2,
    warmup: int = 1,
    batch_size: int | None = None,
    seq_len: int | None = None,
    micro_batches: int | None = None,
    precision: str | None = None,
    fused_loss: bool = False,
    device: torch.device | str | None = None,
    ceilings: Ceilings | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> StepProfile:
    """Profile ``steps`` training steps of ``config`` on ``backend``; write the files to ``out_dir``.

    Args:
        config: a train config name or file (``"gpt2-124m"``), a model config name
            (``"gpt2-tiny"``), or a model (an ``nn.Module`` taking token ids, with ``lm_head``).
            A name that is both is read as the train config.
        backend: ``"torch"`` or ``"triton"`` (default: the train config's, else torch).
        steps, warmup: profiled steps, and unprofiled steps before them (at least 1 on the
            Triton backend, or compilation lands in the profile).
        batch_size, seq_len, micro_batches: override the config's (sequences per
            micro-batch, tokens per sequence, micro-batches per optimizer step).
        precision: "bf16" (autocast; the default on a GPU) or "fp32" (the default on the CPU).
        fused_loss: the loss through ``ops.fused_linear_cross_entropy`` (no (B*T, V) logits).
        ceilings: the roofs to place kernels against; default: measured on ``device``.
        out_dir: where to write the tables, the trace and the charts; None writes nothing.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from llm_course.backends import use_backend
    from llm_course.profiling.annotate import annotate_ops
    from llm_course.profiling.events import OPTIMIZER_RANGE, attribute
    from llm_course.training.loss import fused_loss_fn, loss_fn
    from llm_course.training.trainer import autocast_context, make_optimizer

    if steps < 1 or warmup < 0:
        raise ValueError(f"profile: steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    dev = torch.device(device) if device is not None else get_device()
    on_gpu = is_gpu(dev)
    precision = precision or ("bf16" if on_gpu else "fp32")
    if precision not in ("bf16", "fp32", "fp16"):
        raise ValueError(f"profile: precision must be bf16, fp16 or fp32, got {precision!r}")
    model, name, backend, B, T, n_micro, clip, opt_cfg = _build(config, backend, batch_size, seq_len,
                                                               micro_batches, dev)  # fmt: skip
    vocab = model.config.vocab_size
    optimizer = make_optimizer(model, types.SimpleNamespace(optimizer=opt_cfg), dev)
    compute_loss = fused_loss_fn if fused_loss else loss_fn
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randint(0, vocab, (B, T), generator=g).to(dev), torch.randint(0, vocab, (B, T), generator=g).to(dev))
               for _ in range(n_micro)]  # fmt: skip

    def step() -> torch.Tensor:
        total = torch.zeros((), device=dev)
        with record_function("llm_course.step.forward_backward"):
            for x, y in batches:
                with autocast_context(precision, dev):
                    loss = compute_loss(model, x, y)
                (loss / n_micro).backward()
                total += loss.detach() / n_micro
        with record_function(OPTIMIZER_RANGE):
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return total

    with use_backend(backend):
        for _ in range(warmup):
            step()
        synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(dev)
        wall_unprofiled = (time.perf_counter() - t0) / steps

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with annotate_ops() as calls, profile(activities=activities, record_shapes=True, with_flops=True) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                last = step()
            synchronize(dev)
            wall = (time.perf_counter() - t0) / steps
    if ceilings is None:
        from llm_course.measure.roofline import measure_ceilings

        ceilings = measure_ceilings(dev, quick=not on_gpu)

    att = attribute(prof.events(), calls, on_device=on_gpu, default_element_size=4 if precision == "fp32" else 2)
    kernels = kernel_rows(att, ceilings)
    total_kernel_us = sum(k.total_us for k in kernels) or 1.0
    result = StepProfile(
        model=name, backend=backend, device=_device_name(dev), time_kind="device" if on_gpu else "cpu",
        batch_size=B, seq_len=T, micro_batches=n_micro, precision=precision, steps=steps,
        wall_ms=wall * 1e3, wall_unprofiled_ms=wall_unprofiled * 1e3, busy_ms=att.busy_us / 1e3 / steps,
        kernels=kernels, categories=category_rows(att, wall * 1e6 * steps), ops=op_rows(att, ceilings),
        ceilings=ceilings, unmatched_ranges=att.unmatched_ranges, loss=float(last),
        no_estimate_share=sum(k.total_us for k in kernels if not k.flops_source) / total_kernel_us,
    )  # fmt: skip
    if out_dir is not None:
        from llm_course.profiling.report import write_profile

        write_profile(result, out_dir, prof)
    return result


def _device_name(dev: torch.device) -> str:
    if dev.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    return torch.cuda.get_device_name(dev)
