"""Benchmark text generation: ``llm-course bench model``.

How fast do the course's models generate, and how close is that to what the GPU allows?
For GPT-2 (124M), a Qwen2-0.5B-shaped and a Qwen2-7B-shaped model (``configs/model/``,
random bf16 weights made on the GPU: no download), the benchmark prefills a prompt
(512 tokens) and decodes new tokens greedily (256), at batch 1 and 16 (the 7B shape at
batch 1 only), along several paths:

=====================  ===================================================================
``torch``              the course model, torch backend, a plain Python loop (eager)
``triton``             the same on the Triton backend
``graph-torch``        the decode step captured in a CUDA graph (``generation.cuda_graph``)
``graph-triton``       the same with the Triton kernels
``graph-triton+cublas`` the Triton kernels, but the matmuls on PyTorch's (cuBLAS), in a graph,
                       projections fused (q/k/v and gate/up each one product, ``models.inference``)
``compile``            the course's decode step (projections fused) under
                       ``torch.compile(mode="reduce-overhead")``
``hf-generate``        transformers' ``generate`` on the same weights (greedy, default cache)
``baseline``           a plain PyTorch static-cache decoder with SDPA (``bench.baseline_decoder``)
``baseline-graph``     the same, its step captured in a CUDA graph by hand
``baseline-compile``   the same under ``torch.compile(mode="reduce-overhead")``: gpt-fast's recipe
=====================  ===================================================================

Numbers per row:

* ``tok_s``: decoded tokens per second, ``B / wall_ms`` (wall time per decode step, the host's
  work included: what a user waits for). ``e2e_tok_s`` adds the prefill: all new tokens over
  prefill plus decode time.
* ``gpu_ms``: the step's kernels back to back. The paths that replay graphs are timed a
  second time with CUDA events while the host is given a head start (the GPU first spins,
  ``torch.cuda._sleep``, while the host queues the whole loop); an eager path gets the time of
  its graph twin, which runs the same kernels (``torch``: ``graph-torch``, ``triton``:
  ``graph-triton``, ``baseline``: ``baseline-graph``). ``wall_ms`` far above ``gpu_ms`` means
  the host sets the pace. (The eager course paths also wait for the GPU once per step:
  ``ops.embedding`` checks the token ids on the host outside a capture.)
* ``frac_bw``: a decode step must read every weight (the embedding tables only the rows it
  looks up) and the filled part of the KV cache once: ``bytes / wall time / copy bandwidth``
  (the device-to-device copy measured in the same run, bytes read plus written). At batch 1
  this is the ceiling that matters: a step does about 1 FLOP per byte, far below the
  ridge point. ``frac_bw_gpu`` uses ``gpu_ms``.
* ``intensity`` (FLOP/byte) and ``tflops`` place the step on the roofline (chart).
* transformers' ``generate`` is timed as a whole: its decode time is ``generate(256 tokens)``
  minus ``generate(1 token)`` (the prefill and generate's own set-up).

The rows are measured in :data:`PRIORITY` order, batch 1 first: the rows the course's targets
need come first, so a run cut short by ``--budget-s`` still has them. The targets, printed
with ``--targets`` and never asserted: at batch 1 the course's fastest path decodes at least
as fast as the compiled baseline (Qwen2-0.5B and 7B shapes), reaches 55% of the copy
bandwidth (7B) and at least 5 times the tokens/s of transformers' ``generate`` (0.5B).

    llm-course bench model                                 # everything (an H200: several minutes)
    llm-course bench model --models qwen2-0.5b --batch 1   # one model, batch 1
    llm-course bench model --paths graph-triton+cublas,baseline-compile,hf-generate
    llm-course bench model --quick                         # tiny models, a few tokens: a smoke test
    llm-course bench model --budget-s 400                  # rows past 400 s are skipped (noted)

Files in ``--out`` (default ``bench_out/<device>/``): ``model.csv`` (one row per model, batch
and path; a failed or skipped row has its ``error``), ``model_meta.json`` (GPU, torch, Triton,
transformers versions, date, ceilings), ``model_speed.png`` (tokens/s and fraction of copy
bandwidth) and ``model_roofline.png``.

This benchmark times inference. A training step of the same models (forward, backward,
optimizer, peak memory), against a compiled plain-PyTorch GPT-2: ``llm-course bench train
--models zoo`` (:mod:`llm_course.bench.train`).
"""

from __future__ import annotations

import argparse
import importlib
import math
import time

import torch

from llm_course.bench.common import DTYPES, device_name, free_memory, metadata, output_dir, write_meta
from llm_course.bench.model_report import (  # noqa: F401  (the rows and the report, re-exported)
    COURSE_PATHS,
    CSV_NAME,
    FIELDS,
    META_NAME,
    PATHS,
    GenRow,
    check_targets,
    draw_charts,
    fastest_course_row,
    format_row,
    format_table,
    read_csv,
    write_csv,
)
from llm_course.device import get_device, is_gpu, synchronize
from llm_course.measure.roofline import Ceilings, measure_ceilings

MODELS = ("qwen2-0.5b", "qwen2-7b", "gpt2-124m")  # the order they are measured in
QUICK_MODELS = ("gpt2-tiny", "qwen2-tiny")
BATCH1_ONLY = ("qwen2-7b",)  # too slow (and too much memory for transformers) at larger batches
# the order rows are measured in (a time budget cuts the last ones first)
PRIORITY = ("graph-triton+cublas", "baseline-compile", "hf-generate", "graph-triton", "graph-torch", "torch",
            "triton", "baseline-graph", "baseline", "compile")  # fmt: skip
FUSED_PATHS = ("graph-triton+cublas", "compile")  # run with fuse_projections_; the others unfused
GPU_TWIN = {"torch": "graph-torch", "triton": "graph-triton", "baseline": "baseline-graph"}
EMBEDDING_TABLES = ("transformer.wte.weight", "transformer.wpe.weight", "model.embed_tokens.weight")


# --- models and what a decode step costs ----------------------------------------------------------


def build_model(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The course model of ``configs/model/<name>.yaml`` with random weights, made directly in ``dtype`` on ``device``.

    Parameters are created in ``dtype`` (the default dtype is switched while the model is
    built) on the device (``torch.device`` as a context): a 7B model takes seconds, not
    the minutes of a float32 build on the CPU followed by a copy. RoPE's tables stay float32.
    """
    from llm_course.models import load_model_config
    from llm_course.models.hf_weights import MODEL_CLASSES

    config = load_model_config(name)
    module, cls_name = MODEL_CLASSES[config.family]
    cls = getattr(importlib.import_module(module), cls_name)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def step_cost(model: torch.nn.Module, batch: int, context: float) -> tuple[float, float, float]:
    """(FLOPs, weight bytes, KV-cache bytes) of one decode step with ``context`` cached tokens per row.

    Every weight matrix is read once per step, whatever the batch (the rows share it); an
    embedding table only in the ``batch`` rows it looks up, unless it is also the output
    layer (tied). FLOPs: 2 per weight of a matrix product per row, and ``4 * Hq * D`` per
    cached token per layer for attention (``q @ k`` and ``p @ v``).
    """
    cfg = model.config
    head = model.lm_head.weight
    weight_bytes, matmul_params = 0.0, 0
    for name, p in model.named_parameters():
        if name in EMBEDDING_TABLES and p is not head:
            weight_bytes += batch * p.shape[1] * p.element_size()  # only the rows looked up
            continue
        weight_bytes += p.numel() * p.element_size()
        if p.dim() == 2:
            matmul_params += p.numel()
    Hkv = getattr(cfg, "num_kv_heads", None) or cfg.n_head
    item = head.element_size()
    kv_bytes = cfg.n_layer * 2 * batch * Hkv * context * cfg.head_dim * item
    flops = 2.0 * batch * matmul_params + cfg.n_layer * 4.0 * batch * cfg.n_head * context * cfg.head_dim
    return flops, weight_bytes, kv_bytes


def build_hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' model of the same architecture, holding a copy of ``model``'s weights."""
    import transformers

    from llm_course.models.hf_weights import course_to_hf

    cfg = model.config
    d = dict(cfg.to_hf_config())
    model_type = d.pop("model_type")
    d.pop("architectures", None)
    hf_config = transformers.AutoConfig.for_model(model_type, **d)
    w = model.lm_head.weight
    with torch.device(w.device):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=w.dtype)
    result = hf.load_state_dict(course_to_hf(cfg.family, model.state_dict(), cfg), strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"transformers' model does not take the course's weights: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")  # fmt: skip
    return hf.eval()


# --- the paths: prefill(ids) -> logits (B, V), step(token (B, 1)) -> logits (B, V) -------------------


def make_runner(path: str, model, batch: int, max_len: int):
    """An object with ``prefill(ids)`` and ``step(token)`` for ``path`` (not hf-generate)."""
    from llm_course.bench.baseline_decoder import BaselineDecoder
    from llm_course.generation.cuda_graph import GraphedDecoder
    from llm_course.models.inference import unfuse_projections_

    unfuse_projections_(model)  # an earlier row may have fused the model in place; the fused rows fuse again
    fuse = path in FUSED_PATHS
    if path in ("torch", "triton"):
        return GraphedDecoder(model, batch, max_len, mode="eager", backend=path)
    if path == "graph-torch":
        return GraphedDecoder(model, batch, max_len, mode="graph", backend="torch")
    if path == "graph-triton":
        return GraphedDecoder(model, batch, max_len, mode="graph", backend="triton")
    if path == "graph-triton+cublas":
        cublas = {"linear": "torch", "matmul": "torch"}  # the matmuls on PyTorch's ops: cuBLAS
        return GraphedDecoder(model, batch, max_len, mode="graph", backend="triton", overrides=cublas, fuse=fuse)
    if path == "compile":
        return GraphedDecoder(model, batch, max_len, mode="compile", backend="torch", fuse=fuse)
    if path in ("baseline", "baseline-graph", "baseline-compile"):
        mode = {"baseline": "eager", "baseline-graph": "graph", "baseline-compile": "compile"}[path]
        return BaselineDecoder(model, batch, max_len, mode=mode)
    raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")


def _timed(device, fn):
    """(result, wall ms) of ``fn()``, the device drained before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, (time.perf_counter() - t0) * 1e3


def _decode_loop(runner, logits: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy: ``steps`` decode steps from the prefill's logits; the tokens stay on the device."""
    for _ in range(steps):
        logits = runner.step(logits.argmax(dim=-1, keepdim=True))  # (B, 1) -> (B, V)
    return logits


def measure_runner(row: GenRow, runner_factory, ids: torch.Tensor, device, reps: int) -> None:
    """Set up, warm up, then time ``reps`` prefills and one decode of ``row.new_tokens - 1`` steps.

    For the paths that replay CUDA graphs, the decode is timed a second time on the GPU
    alone: the GPU first spins (``torch.cuda._sleep``) while the host queues the whole loop,
    so CUDA events then time the kernels back to back (``gpu_ms``).
    """
    t0 = time.perf_counter()
    runner = runner_factory()
    steps = row.new_tokens - 1
    with torch.no_grad():
        logits = runner.prefill(ids)
        _decode_loop(runner, logits, min(3, steps))  # warm-up: compile, autotune, capture
        synchronize(device)
        row.setup_s = time.perf_counter() - t0
        prefill_times = []
        for _ in range(reps):
            logits, ms = _timed(device, lambda: runner.prefill(ids))
            prefill_times.append(ms)
        row.prefill_ms = sorted(prefill_times)[len(prefill_times) // 2]
        _, ms = _timed(device, lambda: _decode_loop(runner, logits, steps))
        row.wall_ms = ms / steps
        if is_gpu(device) and (row.path.startswith("graph") or row.path.endswith("compile")):
            logits = runner.prefill(ids)
            row.gpu_ms = _gpu_loop_ms(runner, logits, steps, row.wall_ms) / steps


def _gpu_loop_ms(runner, logits: torch.Tensor, steps: int, wall_ms_per_step: float) -> float:
    """GPU time (ms) of a decode loop whose steps never wait for the host, queued during a spin."""
    host_ms = steps * min(wall_ms_per_step, 0.2) * 2 + 5  # generous: the host's time to queue the loop
    cycles = int(host_ms * 1e-3 * 2e9)  # at about 2 GHz
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(cycles)
    start.record()
    _decode_loop(runner, logits, steps)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def measure_hf(row: GenRow, hf, ids: torch.Tensor, device, reps: int, eos_token_id) -> None:
    """transformers' generate: a warm-up, ``reps`` generates of one token (the prefill, with
    generate's own set-up), and one of ``row.new_tokens``; decode = the difference."""
    n = row.new_tokens
    pad = eos_token_id if eos_token_id is not None else 0
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=pad)
    if eos_token_id is not None:
        kw["eos_token_id"] = eos_token_id

    def gen(k: int):
        return hf.generate(ids, max_new_tokens=k, min_new_tokens=k, **kw)

    t0 = time.perf_counter()
    with torch.no_grad():
        gen(min(4, n))  # warm-up
        synchronize(device)
        row.setup_s = time.perf_counter() - t0
        one = sorted(_timed(device, lambda: gen(1))[1] for _ in range(reps))
        row.prefill_ms = one[len(one) // 2]
        out, total_ms = _timed(device, lambda: gen(n))
    notes = ["decode = generate(new_tokens) - generate(1)"]
    if out.shape[1] != ids.shape[1] + n:
        notes.append(f"generate returned {out.shape[1] - ids.shape[1]} new tokens, not {n}")
    if total_ms > row.prefill_ms:
        row.wall_ms = (total_ms - row.prefill_ms) / (n - 1)
    else:
        notes.append("no decode time left after the prefill's (too few tokens to time)")
    row.note = "; ".join(notes)


def finish_row(row: GenRow, bandwidth_gbs: float | None) -> None:
    """Derived numbers of a measured row."""
    if not math.isfinite(row.wall_ms) or row.wall_ms <= 0:
        return
    row.tok_s = row.batch * 1e3 / row.wall_ms
    total_ms = row.prefill_ms + (row.new_tokens - 1) * row.wall_ms
    row.e2e_tok_s = row.batch * row.new_tokens * 1e3 / total_ms
    row.intensity = row.step_flops / row.step_bytes
    row.tflops = row.step_flops / (row.wall_ms / 1e3) / 1e12
    if bandwidth_gbs:
        row.frac_bw = row.step_bytes / (row.wall_ms / 1e3) / 1e9 / bandwidth_gbs
        if math.isfinite(row.gpu_ms):
            row.frac_bw_gpu = row.step_bytes / (row.gpu_ms / 1e3) / 1e9 / bandwidth_gbs


def fill_gpu_times(rows: list[GenRow], bandwidth_gbs: float | None) -> None:
    """An eager row's kernels-only time is its graph twin's (the same kernels, replayed)."""
    for r in rows:
        twin = GPU_TWIN.get(r.path)
        if twin is None or math.isfinite(r.gpu_ms):
            continue
        t = next((x for x in rows if x.path == twin and (x.model, x.batch) == (r.model, r.batch) and x.ok), None)
        if t is not None:
            r.gpu_ms = t.gpu_ms
            if bandwidth_gbs and r.ok:
                r.frac_bw_gpu = r.step_bytes / (r.gpu_ms / 1e3) / 1e9 / bandwidth_gbs
            r.note = (r.note + "; " if r.note else "") + f"gpu_ms from {twin}"


# --- the run --------------------------------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def run(
    models: list[str],
    batches: list[int],
    prefill: int,
    new_tokens: int,
    paths: list[str],
    dtype_name: str,
    device: torch.device,
    ceilings: Ceilings | None,
    *,
    reps: int = 3,
    budget_s: float | None = None,
    show: bool = True,
) -> list[GenRow]:
    """Measure every (model, batch, path); one failure is recorded in its row, never raised.

    Batch 1 first (all models, in the order given), then the larger batches; within each,
    the paths in :data:`PRIORITY` order. Past ``budget_s`` seconds, the remaining rows are
    recorded as skipped, so a run cut short still has the rows that matter most.
    """
    bandwidth = ceilings.bandwidth_gbs if ceilings is not None else None
    order = [p for p in PRIORITY if p in paths]
    start = time.perf_counter()
    rows: list[GenRow] = []
    plan = [(name, B) for B in sorted(set(batches)) for name in models if B == 1 or name not in BATCH1_ONLY]
    for name, B in plan:
        over = budget_s is not None and time.perf_counter() - start > budget_s
        new = _run_model(name, B, prefill, new_tokens, order, dtype_name, device, bandwidth, reps,
                         skip=f"skipped: past the time budget (--budget-s {budget_s:g})" if over else "",
                         deadline=None if budget_s is None else start + budget_s, show=show)  # fmt: skip
        rows += new
        free_memory()
        torch._dynamo.reset()  # compiled code holds the model's tensors
    fill_gpu_times(rows, bandwidth)
    return rows


def _run_model(name, B, prefill, new_tokens, order, dtype_name, device, bandwidth, reps, *, skip, deadline, show):
    """The rows of one model at one batch size (the model built once, transformers' copy on demand)."""
    rows = []
    model, model_error = None, skip
    if not skip:
        try:
            model = build_model(name, DTYPES[dtype_name], device)
        except Exception as exc:  # out of memory, an unknown config
            model_error = _error(exc)
    cost, n_params, ids = (math.nan,) * 3, math.nan, None
    if model is not None:
        cost = step_cost(model, B, prefill + new_tokens / 2)  # cached tokens, on average over the decode
        n_params = float(sum(p.numel() for p in model.parameters()))
        gen = torch.Generator(device="cpu").manual_seed(1234 + B)
        ids = torch.randint(0, model.config.vocab_size, (B, prefill), generator=gen).to(device)
    max_len = prefill + new_tokens
    hf, hf_error = None, ""
    for path in order:
        row = GenRow(name, B, path, dtype_name, prefill, new_tokens, n_params, cost[1], cost[2], cost[0])
        rows.append(row)
        if model_error:
            row.error = model_error
        elif deadline is not None and time.perf_counter() > deadline:
            row.error = "skipped: past the time budget"
        else:
            try:
                if path == "hf-generate":
                    if hf is None and not hf_error:
                        try:
                            hf = build_hf_model(model)
                        except ImportError as exc:
                            hf_error = f"skipped: transformers is not installed here ({exc})"
                        except Exception as exc:
                            hf_error = f"building transformers' model failed: {_error(exc)}"
                    if hf_error:
                        row.error = hf_error
                    else:
                        measure_hf(row, hf, ids, device, reps, model.config.eos_token_id)
                else:
                    measure_runner(row, lambda: make_runner(path, model, B, max_len), ids, device, reps)
                finish_row(row, bandwidth)
            except Exception as exc:  # one failing path must not stop the run
                row.error = _error(exc)
            if path == "hf-generate":
                hf = None  # transformers' copy of the weights is not needed any more
            free_memory()
        if show:
            print(format_row(row), flush=True)
    return rows


# --- command line -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="llm-course bench model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", default=None, help=f"comma-separated config names (default {','.join(MODELS)}; "
                   f"--quick or on the CPU: {','.join(QUICK_MODELS)})")  # fmt: skip
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,16; qwen2-7b runs at 1 only)")
    p.add_argument("--prefill", type=int, default=None, help="prompt tokens per row (default 512; --quick 16)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens to generate per row (default 256; --quick 8)")
    p.add_argument("--paths", default=None, help=f"comma-separated, from: {', '.join(PATHS)} "
                   "(default: all on a GPU; torch,baseline on the CPU)")  # fmt: skip
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--reps", type=int, default=3, help="prefills timed per row (the median is kept)")
    p.add_argument("--budget-s", type=float, default=None, help="skip the rows that would start after this many seconds")
    p.add_argument("--quick", action="store_true", help="tiny models, a short prompt, a few tokens (smoke test)")
    p.add_argument("--targets", action="store_true", help="also print the pass/fail of the generation targets")
    p.add_argument("--out", default=None, help="output folder (default bench_out/<device>/)")
    p.add_argument("--redraw", action="store_true", help="only redraw the charts from --out's files")
    return p.parse_args(argv)


def _list(text: str | None, default, kind=str) -> list:
    return [kind(s.strip()) for s in text.split(",") if s.strip()] if text else list(default)


def _transformers_version() -> str:
    """The installed transformers' version, read from its metadata (importing it takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = get_device()
    out_dir = output_dir(args, device)
    if args.redraw:
        for path in draw_charts(out_dir):
            print(f"wrote {path}")
        return 0
    gpu = is_gpu(device)
    models = _list(args.models, QUICK_MODELS if args.quick or not gpu else MODELS)  # no 7B model on a laptop
    batches = _list(args.batch, (1, 16) if gpu and not args.quick else (1, 2), int)
    default_paths = list(PATHS) if gpu else ["torch", "baseline"]
    paths = _list(args.paths, default_paths)
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        print(f"unknown paths: {', '.join(unknown)}; choose from {', '.join(PATHS)}")
        return 2
    prefill = args.prefill or (16 if args.quick or not gpu else 512)
    new_tokens = args.new_tokens or (8 if args.quick or not gpu else 256)
    if new_tokens < 2 or prefill < 1:
        print("--new-tokens must be at least 2 and --prefill at least 1")
        return 2
    dtype = args.dtype or ("bf16" if gpu else "fp32")
    print(f"Generation benchmark on {device_name(device)} ({dtype}): models {', '.join(models)}; batch "
          f"{', '.join(map(str, batches))}; prefill {prefill}, {new_tokens} new tokens; paths {', '.join(paths)}")  # fmt: skip
    ceilings = measure_ceilings(device, quick=args.quick)
    print(f"ceilings measured now: {ceilings}")
    rows = run(models, batches, prefill, new_tokens, paths, dtype, device, ceilings, reps=args.reps, budget_s=args.budget_s)

    write_csv(rows, out_dir / CSV_NAME)
    fastest = {f"{m} batch {b}": r.path for m, b in dict.fromkeys((r.model, r.batch) for r in rows)
               if (r := fastest_course_row(rows, m, b)) is not None}  # fmt: skip
    targets = [{"target": name, "verdict": verdict, "numbers": numbers} for name, verdict, numbers in check_targets(rows)]
    meta = metadata(device, ceilings, benchmark="model", dtype=dtype, models=models, batches=batches, prefill=prefill,
                    new_tokens=new_tokens, paths={p: PATHS[p] for p in paths}, transformers=_transformers_version(),
                    fastest_course_path=fastest, targets=targets)  # fmt: skip
    write_meta(meta, out_dir / META_NAME)
    charts = draw_charts(out_dir)
    print("\n" + format_table(rows))
    print(f"\nwrote {out_dir / CSV_NAME}, {out_dir / META_NAME}, " + ", ".join(p.name for p in charts))
    failed = [r for r in rows if r.error and not r.error.startswith("skipped")]
    if failed:
        print(f"{len(failed)} row(s) failed; their errors are in the CSV's 'error' column")
    if args.targets:
        print("\nGeneration targets (reported, not asserted):")
        for t in targets:
            print(f"  {t['verdict']:<4}  {t['target']}  ({t['numbers']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
