"""The pretraining loop, top to bottom (in the spirit of nanoGPT's train.py).

    from llm_course.training.config import load_train_config
    from llm_course.training.trainer import train
    result = train(load_train_config("gpt2-tiny-cpu"))

One optimizer step:

1. set the learning rate of this step (warm-up + cosine, :mod:`schedule`);
2. take ``grad_accum_steps`` micro-batches of ``batch_size`` sequences; run forward and
   backward on each. The gradients add up in ``.grad``; each micro-batch's mean loss is
   weighted by *its share of the tokens* of the whole step, so the result is exactly the
   gradient of the mean loss over every token of the step (as one big batch would give),
   even when micro-batches hold different numbers of real (non-ignored) tokens;
3. clip the gradients' global norm to ``grad_clip``;
4. a NaN or inf loss or gradient norm stops the run with a message; the last checkpoint
   on disk stays the last good one;
5. ``optimizer.step()``; log, evaluate and save now and then.

Mixed precision: ``precision: bf16`` runs matmuls in bfloat16 under ``torch.autocast``
(weights, gradients and optimizer state stay fp32); ``fp16`` does too, with a GradScaler
that multiplies the loss so small fp16 gradients do not flush to zero (and skips a step
whose gradients overflowed). Ctrl-C saves a checkpoint and stops; running the same
command again resumes from ``latest``.

The backward runs on the calling thread (``torch.autograd.set_multithreading_enabled(False)``,
as torchtitan does). By default PyTorch hands a GPU's backward to a worker thread of its own,
which helps only a process that drives several GPUs at once; with a single GPU per process it
costs a thread hand-off per backward, which an op written in Python pays each time the engine
calls it (measured on an H200's host: 81 against 38 us for an empty ``autograd.Function``, 494
against 352 us for the course's LayerNorm at 32768x4096; ``results/README.md``).

Several processes (``torchrun``, :mod:`distributed`): ``parallelism: ddp`` keeps a full model
per process (DistributedDataParallel); ``parallelism: fsdp`` shards parameters, gradients and
optimizer state over the processes (FSDP2's ``fully_shard``, applied before the optimizer is
built). Either way every process takes the same step as one process with the whole global
batch. Checkpoints hold the full model and optimizer state, so a run may resume with another
number of processes, or switch between ddp and fsdp (:func:`restore_rank_state` says what is
re-sharded; bit-exact continuation is promised only with the same number of processes).

Hooks, so each piece can be replaced (and tested) on its own: ``model``, ``data`` (an
object with ``next_batch`` / ``val_batches`` / ``state_dict`` / ``load_state_dict``, as
:func:`llm_course.data.pretrain.build_pretrain_data` returns) and ``loss_fn(model, input_ids,
labels) -> mean loss over the non-ignored (!= -100) labels``. The loss function receives
the (possibly DDP-wrapped or FSDP-sharded) model and must call it (``model(...)``) so that
DDP syncs grads (FSDP gathers a block's weights in the block's own forward).

``loss_fn`` may also return ``(loss, metrics)``, ``metrics`` a dict of 0-d tensors (DPO's
reward accuracy, say): each metric is averaged over the step with the loss's weights and
logged beside it (console, history, extra columns of log.csv; evaluation logs them as
``val_<name>``). ``count_fn(labels) -> number`` says how many units a micro-batch's mean loss
averages over, which is its weight in the step (default: the labels that are not -100, so
tokens; DPO passes the number of preference pairs).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_course.paths import run_checkpoints_dir
from llm_course.training import checkpoint as ckpt
from llm_course.training import distributed as D
from llm_course.training.config import TrainConfig
from llm_course.training.schedule import lr_for

IGNORE_INDEX = -100
CSV_FIELDS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_ppl", "elapsed_s"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or inf."""


@dataclass
class TrainResult:
    """What a run did: per-step losses, the last evaluation, why it stopped."""

    out_dir: Path
    history: list[dict] = field(default_factory=list)  # one dict per optimizer step
    val_loss: float | None = None
    unigram_loss: float | None = None  # the baseline: cross-entropy of token frequencies alone
    val_metrics: dict = field(default_factory=dict)  # the last evaluation's averages of loss_fn's metrics
    stopped: str = "done"  # done | nan | interrupted
    last_checkpoint: Path | None = None
    message: str = ""


def default_loss_fn(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labels that are not -100 (labels already shifted)."""
    logits = model(input_ids)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def count_tokens(labels: torch.Tensor) -> int:
    """The default ``count_fn``: the labels that are trained on (not -100)."""
    return int((labels != IGNORE_INDEX).sum())


def split_loss(out) -> tuple[torch.Tensor, dict]:
    """``loss_fn``'s result as ``(loss, metrics)``: a bare loss tensor has no metrics."""
    if isinstance(out, (tuple, list)):
        loss, metrics = out
        return loss, dict(metrics)
    return out, {}


def resolve_loss_fn():
    """The course loss (llm_course.training.loss.loss_fn) when it exists, else :func:`default_loss_fn`."""
    try:
        from llm_course.training import loss as loss_module
    except ImportError:
        return default_loss_fn
    return getattr(loss_module, "loss_fn", default_loss_fn)


def resolve_out_dir(out_dir: str) -> Path:
    """A relative out_dir is under the runs folder (llm_course.paths.runs_dir(), $LLM_COURSE_RUNS_DIR)."""
    from llm_course import paths

    p = Path(out_dir).expanduser()
    return p if p.is_absolute() else paths.runs_dir() / p


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on matrices, none on norms, biases and embedding tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied head is the embedding's Parameter: listed once
        if not p.requires_grad:
            continue
        is_embedding = any(k in name for k in ("wte", "wpe", "embed_tokens"))
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=device.type == "cuda")


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block in backward instead of storing its activations.
    Returns the number of blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
                n += 1
    return n


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model, data, loss_fn, cfg: TrainConfig, info: D.DistInfo, train_counts: torch.Tensor | None = None,
             count_fn=None, metrics_out: dict | None = None) -> tuple[float, float | None]:  # fmt: skip
    """Token-averaged loss over ``eval_batches`` held-out batches (all ranks), and the loss of the
    unigram baseline on the same tokens (None without ``train_counts``). With ``count_fn`` the
    batches are weighted by it instead of by tokens; ``metrics_out`` (a dict) receives the
    averages of the metrics ``loss_fn`` returns."""
    model.eval()
    total = torch.zeros(3, dtype=torch.float64, device=info.device)  # loss * tokens, tokens, unigram loss sum
    metric_sums: dict[str, torch.Tensor] = {}
    log_p = unigram_log_probs(train_counts) if train_counts is not None else None
    for x, y in data.val_batches(cfg.eval_batches, cfg.batch_size):
        valid = y[y != IGNORE_INDEX].flatten()
        uni = -log_p[valid].sum() if log_p is not None else torch.zeros((), dtype=torch.float64)
        n = float(count_fn(y) if count_fn is not None else count_tokens(y))
        x, y = x.to(info.device), y.to(info.device)
        with autocast_context(cfg.precision, info.device):
            loss, metrics = split_loss(loss_fn(model, x, y))
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + v.detach().double() * n
        total += torch.tensor([loss.double().item() * n, n, uni.double().item()], dtype=torch.float64, device=info.device)
    model.train()
    D.all_reduce_sum(total, info)
    n = total[1].clamp_min(1)
    if metrics_out is not None and metric_sums:
        names = sorted(metric_sums)
        sums = D.all_reduce_sum(torch.stack([metric_sums[k].to(info.device) for k in names]), info)
        metrics_out.update({k: (v / n).item() for k, v in zip(names, sums)})
    return (total[0] / n).item(), ((total[2] / n).item() if log_p is not None else None)


def unigram_log_probs(counts: torch.Tensor) -> torch.Tensor:
    """log p(token) of the unigram model fitted on the training tokens, with add-one (Laplace)
    smoothing so that a token never seen in training does not cost an infinite loss."""
    counts = counts.double() + 1.0
    return counts.log() - counts.sum().log()  # (V,)


def unigram_loss(counts: torch.Tensor, targets: torch.Tensor) -> float:
    """Cross-entropy (nats/token) of ``targets`` under the unigram model of ``counts``: the loss of a
    model that ignores the context and only knows how often each token occurs. A trained model
    must go clearly below it."""
    return float(-unigram_log_probs(counts)[targets].mean())


class _Logger:
    """Console lines and a CSV file (log.csv in out_dir), plus TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool, print_fn=print, append: bool = False):
        self.enabled, self.print = enabled, print_fn
        self.file = self.writer = self.tb = None
        self.fields = list(CSV_FIELDS)
        if not enabled:
            return
        self.path = path = out_dir / "log.csv"
        new = not (append and path.exists())  # a fresh run starts a new log; a resumed one appends
        if not new:  # keep the columns the log already has (a loss_fn's metrics)
            with path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            self.fields += [k for k in header if k not in self.fields]
        self.file = path.open("a" if not new else "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields)
        if new:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def _add_columns(self, names: list[str]) -> None:
        """Grow the header: rewrite the rows so far under the new one (extra metrics appear after step 1)."""
        self.file.close()
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.fields += names
        self.file = self.path.open("w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields)
        self.writer.writeheader()
        self.writer.writerows({k: r.get(k) or "" for k in self.fields} for r in rows)

    def row(self, **values) -> None:
        if not self.enabled:
            return
        new = [k for k in values if k not in self.fields]
        if new:
            self._add_columns(new)
        self.writer.writerow({k: values.get(k, "") for k in self.fields})
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if k != "step" and isinstance(v, (int, float)) and v != "":
                    self.tb.add_scalar(k, v, values["step"])

    def say(self, text: str) -> None:
        if self.enabled:
            self.print(text, flush=True) if self.print is print else self.print(text)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def restore_rank_state(state: dict, data, info: D.DistInfo, seed: int, source) -> tuple[dict, torch.Tensor | None]:
    """This rank's part of a loaded checkpoint: the data position (loaded into ``data``), and the
    RNG state and unigram counts to continue with.

    Same number of processes as the run that saved: rank r takes entry r of every list, and the
    run continues bit for bit. A different number: the checkpoint's model and optimizer are full
    (unsharded), so only the per-rank parts need care:

    * data: ``data.load_state_dict`` receives the list of every saved rank's state and re-shards
      the position (a data object says it can with ``can_reshard = True``; see
      :meth:`llm_course.data.pretrain.PackedData.load_state_dict`);
    * RNG: each new rank is seeded from (seed, step, world size, rank): deterministic, but not the
      random numbers the uninterrupted run would have drawn (dropout masks differ): bit-exact
      continuation is promised only with the same number of processes;
    * the training-token counts of the unigram baseline: their sum goes to rank 0 (they are summed
      over ranks when used).
    """
    saved_world, rank = len(state["rng"]), info.rank
    if saved_world == info.world_size:
        if state["data"] is not None:
            data.load_state_dict(state["data"][rank])
        counts = state["extra"].get("train_counts")
        return state["rng"][rank], (counts[rank].to(torch.float64) if counts is not None else None)
    if state["data"] is not None:
        if not getattr(data, "can_reshard", False):
            raise ValueError(f"checkpoint {source} was written by {saved_world} process(es), this run has "
                             f"{info.world_size}, and the data ({type(data).__name__}) cannot re-shard its position "
                             f"(no can_reshard): resume with {saved_world} process(es)")  # fmt: skip
        data.load_state_dict(list(state["data"]))
    counts = state["extra"].get("train_counts")
    if counts is not None:
        total = torch.stack([c.to(torch.float64) for c in counts]).sum(0)
        counts = total if rank == 0 else torch.zeros_like(total)
    return ckpt.reseeded_rng_state(seed, state["step"], info.world_size, rank), counts


def train(
    cfg: TrainConfig,
    *,
    model: torch.nn.Module | None = None,
    data=None,
    loss_fn=None,
    resume: bool | str = "auto",
    info: D.DistInfo | None = None,
    print_fn=print,
    count_fn=None,
) -> TrainResult:
    """Run (or resume) the pretraining run ``cfg`` describes; see the module docstring.

    ``resume``: "auto" continues from ``<out_dir>/checkpoints/latest`` when it exists; False
    starts afresh (a previous run's checkpoints are then overwritten step by step); a path
    resumes from that checkpoint folder.
    """
    from llm_course.backends import use_backend
    from llm_course.models import AutoModelForCausalLM

    # --- set-up ------------------------------------------------------------------------------
    info = info or D.init_distributed(cfg.device)
    device = info.device
    out_dir = resolve_out_dir(cfg.out_dir)
    ckpt_root = run_checkpoints_dir(out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if model is None:
        model = AutoModelForCausalLM.from_name(cfg.model_config_path)
    model = model.to(device)
    model.train()
    block_size = cfg.block_size or model.config.block_size
    if data is None:
        from llm_course.data.pretrain import build_pretrain_data
        from llm_course.tokenizer import load_tokenizer

        data = build_pretrain_data(cfg.data, load_tokenizer(), block_size, rank=info.rank,
                                   world_size=info.world_size, seed=cfg.seed)  # fmt: skip
    loss_fn = loss_fn or resolve_loss_fn()
    inner = model  # the model itself: torch.compile and DDP wrap it below, FSDP shards it in place
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(inner)
    if cfg.parallelism == "fsdp":  # before the optimizer: it must hold the sharded parameters
        D.wrap_model(inner, info, "fsdp", cfg.precision)
    optimizer = make_optimizer(inner, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    torch.manual_seed(cfg.seed + info.rank)  # dropout masks differ between ranks

    # --- resume ------------------------------------------------------------------------------
    step, tokens_seen, start = 0, 0, None
    vocab_size = model.config.vocab_size
    train_counts = torch.zeros(vocab_size, dtype=torch.float64)  # how often each token was a training target
    if resume == "auto":
        start = ckpt.latest_checkpoint(ckpt_root)
    elif resume not in (False, None):
        start = Path(resume)
    rng_to_restore = None
    if start is not None:
        state = ckpt.load_checkpoint(start, model=inner, optimizer=optimizer, scaler=scaler)
        step, tokens_seen = state["step"], state["extra"].get("tokens_seen", 0)
        rng_to_restore, saved_counts = restore_rank_state(state, data, info, cfg.seed, start)
        if saved_counts is not None:
            train_counts = saved_counts

    if cfg.compile:
        model = torch.compile(model)
    if cfg.parallelism == "ddp":
        model = D.wrap_model(model, info, "ddp")
    log = _Logger(out_dir, info.is_main, print_fn, append=start is not None)
    result = TrainResult(out_dir=out_dir)
    flops_per_token = inner.flops_per_token(block_size) if hasattr(inner, "flops_per_token") else None
    from llm_course.measure.peaks import device_peak

    peak = device_peak(device)
    peak_flops = peak.tflops("fp32" if cfg.precision == "fp32" else "bf16") * 1e12 * info.world_size if peak else None
    if start is not None:
        log.say(f"resumed from {start} at step {step}")
    log.say(f"training {cfg.init_from or cfg.model_config_path}: {inner.num_parameters():,} parameters, {info.world_size} process(es) "
            f"{f'({cfg.parallelism}) ' if info.enabled else ''}on {device}, {cfg.batch_size} x {cfg.grad_accum_steps} x {info.world_size} sequences of {block_size} "
            f"tokens per step, {cfg.max_steps} steps")  # fmt: skip

    def save(at_step: int, data_state, rng, counts_state) -> None:
        data_states = D.gather_objects(data_state, info)
        counts_per_rank = D.gather_objects(counts_state, info)
        rngs = D.gather_objects(rng, info)
        full = {}  # a sharded model: every rank helps gather the full states, rank 0 writes them
        if D.is_sharded(inner):
            full["model_state"], full["optimizer_state"] = ckpt.full_state_dicts(inner, optimizer)
        if info.is_main:
            extra = {"tokens_seen": tokens_seen, "loss": result.history[-1]["loss"] if result.history else float("nan"),
                     "train_counts": counts_per_rank}  # fmt: skip
            result.last_checkpoint = ckpt.save_checkpoint(
                ckpt_root, at_step, model=inner, optimizer=optimizer, scaler=scaler, data_states=data_states,
                rng_states=rngs, train_config=cfg.to_dict(), extra=extra, keep_last=cfg.keep_last, **full)  # fmt: skip
            log.say(f"saved {result.last_checkpoint}")
        D.barrier(info)

    def run_eval() -> None:
        counts = D.all_reduce_sum(train_counts.to(device), info).cpu()  # training targets of every rank
        val_metrics: dict[str, float] = {}
        result.val_loss, result.unigram_loss = evaluate(model, data, loss_fn, cfg, info,
                                                        counts if count_fn is None else None,  # a token baseline
                                                        count_fn=count_fn, metrics_out=val_metrics)  # fmt: skip
        result.val_metrics = val_metrics
        extra = {f"val_{k}": v for k, v in val_metrics.items()}
        log.row(step=step, val_loss=result.val_loss, val_ppl=math.exp(min(result.val_loss, 50.0)), **extra)
        log.say(f"step {step}: val loss {result.val_loss:.4f} (perplexity {math.exp(min(result.val_loss, 50)):.1f})"
                + ("" if result.unigram_loss is None else f", unigram baseline {result.unigram_loss:.4f}")
                + "".join(f" | {k} {v:.4f}" for k, v in extra.items()))  # fmt: skip

    # --- the loop ----------------------------------------------------------------------------
    if rng_to_restore is not None:
        ckpt.set_rng_state(rng_to_restore)  # last: nothing after this may draw random numbers before step 1
    t0 = t_log = time.perf_counter()
    tokens_since_log = 0
    in_step, snapshot = False, None
    try:
        # backward on this thread: one GPU per process needs no autograd worker thread (see above)
        with use_backend(cfg.backend), torch.autograd.set_multithreading_enabled(False):
            while step < cfg.max_steps:
                snapshot, in_step = (data.state_dict(), ckpt.rng_state(), train_counts.clone()), True
                lr = lr_for(cfg, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                # micro-batches first: their token counts weight each one's loss
                micro = [data.next_batch(cfg.batch_size) for _ in range(cfg.grad_accum_steps)]
                counts = torch.tensor([float(count_fn(y) if count_fn else count_tokens(y)) for _, y in micro],
                                      dtype=torch.float64)  # fmt: skip
                n_real = sum(count_tokens(y) for _, y in micro)  # real tokens, for tokens/s
                for _, y in micro:  # for the unigram baseline
                    train_counts += torch.bincount(y[y != IGNORE_INDEX].flatten().cpu(), minlength=vocab_size)[:vocab_size]
                n_step, n_real = D.all_reduce_sum(torch.tensor([counts.sum().item(), n_real], dtype=torch.float64,
                                                               device=device), info)  # all ranks  # fmt: skip
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                metric_sums: dict[str, torch.Tensor] = {}
                for i, (x, y) in enumerate(micro):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    last = i == len(micro) - 1
                    with D.gradient_sync(inner if D.is_sharded(inner) else model, info, sync=last):
                        with autocast_context(cfg.precision, device):
                            loss, metrics = split_loss(loss_fn(model, x, y))  # mean over this micro-batch's units
                        # DDP and FSDP average grads over ranks (divide by world size): multiply it back
                        weight = counts[i].item() * info.world_size / n_step.item()
                        scaler.scale(loss * weight).backward()
                    loss_sum += loss.detach().double() * counts[i].item()
                    for k, v in metrics.items():  # weighted like the loss
                        metric_sums[k] = metric_sums.get(k, 0.0) + v.detach().double() * counts[i].item()
                step_loss = D.all_reduce_sum(loss_sum, info) / n_step  # token-mean loss of the step
                names = sorted(metric_sums)
                step_metrics = {}
                if names:
                    sums = D.all_reduce_sum(torch.stack([metric_sums[k].to(device) for k in names]), info) / n_step
                    step_metrics = dict(zip(names, sums.tolist()))

                scaler.unscale_(optimizer)  # grads back to their true size before clipping
                grad_norm = torch.nn.utils.clip_grad_norm_(inner.parameters(), cfg.grad_clip or float("inf"))
                grad_norm = D.to_local_scalar(grad_norm)  # FSDP: a DTensor (the norm over every rank's shards)
                if not _finite(step_loss) or (not _finite(grad_norm) and not scaler.is_enabled()):
                    what = "loss" if not _finite(step_loss) else "gradient norm"
                    raise TrainingDiverged(
                        f"step {step + 1}: the {what} is {float(step_loss if what == 'loss' else grad_norm)}; "
                        f"training stopped. Lower optimizer.lr, raise schedule.warmup_steps, set grad_clip, or use "
                        f"bf16 instead of fp16. The last good checkpoint is "
                        f"{ckpt.latest_checkpoint(ckpt_root) if info.is_main else None} (resume from it).")  # fmt: skip
                scaler.step(optimizer)  # skipped by the scaler when fp16 grads overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                in_step = False
                n_tok = int(n_real.item())
                tokens_seen += n_tok
                tokens_since_log += n_tok
                result.history.append({"step": step, "loss": step_loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                                       **step_metrics})  # fmt: skip

                # --- log, evaluate, save ---------------------------------------------------------
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    now = time.perf_counter()
                    tps = tokens_since_log / max(now - t_log, 1e-9)
                    mfu = flops_per_token * tps / peak_flops if (peak_flops and flops_per_token) else None
                    log.row(step=step, loss=step_loss.item(), lr=lr, grad_norm=grad_norm.item(), tokens_per_s=tps,
                            mfu="" if mfu is None else mfu, elapsed_s=now - t0, **step_metrics)  # fmt: skip
                    log.say(f"step {step}/{cfg.max_steps} | loss {step_loss.item():.4f} | lr {lr:.2e} | grad norm "
                            f"{grad_norm.item():.3f} | {tps:,.0f} tok/s" + ("" if mfu is None else f" | MFU {mfu:.1%}")
                            + "".join(f" | {k} {v:.4f}" for k, v in step_metrics.items()))  # fmt: skip
                    t_log, tokens_since_log = now, 0
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
                    run_eval()
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                    save(step, data.state_dict(), ckpt.rng_state(), train_counts)
    except TrainingDiverged as e:
        optimizer.zero_grad(set_to_none=True)
        result.stopped, result.message = "nan", str(e)
        log.say(str(e))
    except KeyboardInterrupt:
        optimizer.zero_grad(set_to_none=True)
        result.stopped = "interrupted"
        log.say(f"\ninterrupted at step {step}: saving a checkpoint (run the same command again to resume)")
        data_state, rng, counts_state = snapshot if in_step else (data.state_dict(), ckpt.rng_state(), train_counts)
        save(step, data_state, rng, counts_state)
    finally:
        log.close()
    if result.stopped == "done" and result.val_loss is not None and info.is_main:
        baseline = ("" if result.unigram_loss is None else  # a count_fn run (DPO) has no token baseline
                    f" vs unigram baseline {result.unigram_loss:.4f} (a model that only knows token frequencies)")
        result.message = f"final val loss {result.val_loss:.4f}{baseline}; {tokens_seen:,} tokens seen"
        log.say(result.message)
    return result
