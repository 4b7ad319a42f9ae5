"""Profiling a whole training step: kernel names to categories, tables, files, the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch

from llm_course import ops
from llm_course.measure.roofline import Ceilings
from llm_course.models.config import load_model_config
from llm_course.profiling import annotate_ops, categorize, classify_kernel, profile_training_step
from llm_course.profiling.cli import main as profile_main
from llm_course.profiling.events import _union_us, short_name
from llm_course.profiling.report import format_comparison, limits_line
from llm_course.profiling.tables import CATEGORY_FIELDS, KERNEL_FIELDS, OP_FIELDS

# Real kernel names, as CUDA/cuBLAS/PyTorch/NCCL and the course's Triton kernels report them.
KERNEL_NAMES = [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", "matmul"),
    ("ampere_sgemm_128x64_tn", "matmul"),
    ("nvjet_tst_192x192_64x4_1x2_h_bz_coopB_TNT", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>(cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8::Params)", "matmul"),
    ("matmul_kernel", "matmul"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const::{lambda()#2}::operator()() const::{lambda(c10::BFloat16)#1}, std::array<char*, 2ul> >(int, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const::{lambda()#2}::operator()() const::{lambda(c10::BFloat16)#1}, std::array<char*, 2ul>)", "elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned int>, TrivialOffsetCalculator<1, unsigned int>, at::native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1> >(int, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1}, std::array<char*, 2ul>, TrivialOffsetCalculator<1, unsigned int>, TrivialOffsetCalculator<1, unsigned int>, at::native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1>)", "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4>)", "elementwise"),
    ("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, cutlass::bfloat16_t, Flash_kernel_traits<64, 128, 128, 4, cutlass::bfloat16_t> >, false, true, false, false, true, true, false, false>(flash::Flash_fwd_params)", "attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, 128, 128, 8, 2, 4, 2, false, false, cutlass::bfloat16_t, Flash_kernel_traits<64, 128, 128, 8, cutlass::bfloat16_t> >, true, false, false, false, false, false, false>(pytorch_flash::Flash_bwd_params)", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)", "attention"),
    ("_attn_fwd", "attention"),
    ("_flash_fwd_kernel", "attention"),
    ("_bwd_dkdv_kernel", "attention"),
    ("_bwd_dq_kernel", "attention"),
    ("_bwd_preprocess_kernel", "attention"),
    ("layernorm_fwd_kernel", "norms"),
    ("layernorm_bwd_kernel", "norms"),
    ("rmsnorm_fwd_kernel", "norms"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, c10::BFloat16*)", "norms"),
    ("cross_entropy_fwd_kernel", "loss"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>(float*, float const*, int)", "loss"),
    ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>(float*, float*, float const*, long const*, float const*, bool, long, long, long, long)", "loss"),
    ("gelu_tanh_fwd_kernel", "elementwise"),
    ("silu_mul_bwd_kernel", "elementwise"),
    ("rope_kernel", "elementwise"),
    ("embedding_fwd_kernel", "elementwise"),
    ("add_kernel", "elementwise"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, float*, double, double, double, double, double, bool, float const*, float const*>(at::native::(anonymous namespace)::FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, float*, double, double, double, double, double, bool, float const*, float const*)", "optimizer"),
    ("aten::_foreach_mul_", "optimizer"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)", "communication"),
    ("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"),
    ("Memset (Device)", "memcpy"),
    ("aten::mm", "matmul"),
    ("aten::addmm", "matmul"),
    ("aten::native_layer_norm", "norms"),
    ("aten::add", "elementwise"),
    ("some_unknown_thing", "other"),
]


@pytest.mark.parametrize("name,category", KERNEL_NAMES, ids=[n[:40] for n, _ in KERNEL_NAMES])
def test_classify_kernel(name, category):
    assert classify_kernel(name) == category


def test_categorize_prefers_where_a_kernel_ran():
    # a subtraction inside the reference LayerNorm is "norms"; a gemm inside the fused loss is "loss"
    assert categorize("void at::native::vectorized_elementwise_kernel<4, sub>", op="layer_norm") == "norms"
    assert categorize("sm90_xmma_gemm_bf16bf16", op="fused_linear_cross_entropy") == "loss"
    assert categorize("void at::native::vectorized_elementwise_kernel<4, mul>", region="optimizer") == "optimizer"
    # copies and communication stay what they are, wherever they ran
    assert categorize("Memcpy DtoD (Device -> Device)", op="linear") == "memcpy"
    assert categorize("ncclKernel_AllReduce_RING_LL_Sum_float", region="optimizer") == "communication"
    assert categorize("ampere_sgemm_128x64_tn") == "matmul"


def test_union_and_short_names():
    assert _union_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert short_name("void at::native::vectorized_elementwise_kernel<4, at::native::X<float> >(int)") == \
        "at::native::vectorized_elementwise_kernel<>(int)"


def test_annotate_ops_marks_and_restores():
    before = ops.linear
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(16, 8)
    with annotate_ops() as calls, torch.profiler.profile() as prof:
        ops.linear(x, w).sum().backward()
    assert ops.linear is before  # put back on exit
    assert [c.op for c in calls] == ["linear"]
    assert calls[0].fwd_flops == 2 * 4 * 16 * 8 and calls[0].bwd_flops == 2 * calls[0].fwd_flops
    assert calls[0].fwd_bytes == (4 * 8 + 8 * 16 + 4 * 16) * 4
    assert any(e.name == "llm_course.ops.linear" for e in prof.events())


def test_the_fused_add_and_norm_reads_and_writes_each_tensor_once():
    """add_layer_norm: x (float32) and h (float16) read, s (float32) and y (float16) written, plus the parameters."""
    from llm_course.profiling.annotate import op_cost

    x, h, w, b = torch.randn(4, 8), torch.randn(4, 8).half(), torch.randn(8), torch.randn(8)
    call = op_cost("add_layer_norm", (x, h, w, b), {})
    assert call.fwd_bytes == 4 * 8 * (4 + 2 + 4 + 2) + 2 * 8 * 4
    assert call.bwd_bytes == 4 * 8 * (3 * 4 + 2 * 2) + 2 * 8 * 4
    norm = op_cost("layer_norm", (x, w, b), {})
    assert call.fwd_flops == norm.fwd_flops + 4 * 8  # the norm's, and one add per element
    assert classify_kernel("add_norm_fwd_kernel") == classify_kernel("add_norm_bwd_kernel") == "norms"


def test_every_op_has_a_category_and_a_cost():
    """A new op in llm_course/ops.py must reach the profiler's tables: a category, and FLOPs and bytes."""
    import sys
    from pathlib import Path

    from llm_course.backends import declared_ops
    from llm_course.profiling.annotate import op_cost
    from llm_course.profiling.categories import OP_CATEGORY

    sys.path.insert(0, str(Path(__file__).parent))
    from op_samples import SAMPLES

    assert set(OP_CATEGORY) == set(declared_ops())
    for name in declared_ops():
        args, kwargs = SAMPLES[name]("cpu")
        call = op_cost(name, args, kwargs)
        assert call.fwd_bytes > 0, f"{name}: no cost formula in llm_course/profiling/annotate.py"
    packed = op_cost("qkv_attention", SAMPLES["qkv_attention"]("cpu")[0], {})
    q = torch.empty(2, 2, 13, 16)  # the sample's (B, T, 3C) = (2, 13, 96) as three (B, H, T, D)
    split = op_cost("attention", (q, q, q), {})
    assert (packed.fwd_flops, packed.fwd_bytes, packed.bwd_flops) == (split.fwd_flops, split.fwd_bytes, split.bwd_flops)


B, T = 2, 16


@pytest.fixture(scope="module")
def step_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    ceilings = Ceilings("test CPU", bandwidth_gbs=10.0, flops_tflops=0.1, dtype="fp32", measured=True)
    p = profile_training_step("gpt2-tiny", "torch", steps=1, warmup=1, batch_size=B, seq_len=T, device="cpu",
                              ceilings=ceilings, out_dir=out)  # fmt: skip
    return p, out


def _read_csv(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_tables_and_files(step_profile):
    p, out = step_profile
    assert p.time_kind == "cpu" and p.steps == 1 and math.isfinite(p.loss)
    for name, fields in (("kernels.csv", KERNEL_FIELDS), ("categories.csv", CATEGORY_FIELDS), ("ops.csv", OP_FIELDS)):
        header, rows = _read_csv(out / name)
        assert header == fields and rows, name
    header, rows = _read_csv(out / "kernels.csv")
    assert abs(sum(float(r["share"]) for r in rows) - 1) < 1e-6
    times = [float(r["total_us"]) for r in rows]
    assert times == sorted(times, reverse=True)
    assert all(abs(float(r["mean_us"]) * int(r["calls"]) - float(r["total_us"])) < 1e-3 * float(r["total_us"]) + 1e-6
               for r in rows)  # fmt: skip
    _, cats = _read_csv(out / "categories.csv")
    assert abs(sum(float(r["share"]) for r in cats) - 1) < 1e-6
    by_cat = {r["category"]: float(r["time_us"]) for r in cats}
    for needed in ("matmul", "attention", "norms", "loss", "optimizer", "idle"):
        assert needed in by_cat
    assert by_cat["matmul"] > 0 and by_cat["norms"] > 0 and by_cat["loss"] > 0 and by_cat["optimizer"] > 0
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert "llm_course.ops.linear" in names and "aten::mm" in names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "gpt2-tiny" and summary["backend"] == "torch" and summary["limits"]
    assert (out / "categories.png").stat().st_size > 0 and (out / "roofline.png").stat().st_size > 0


def test_ops_on_the_roofline(step_profile):
    p, _ = step_profile
    ops_by = {(o.op, o.phase): o for o in p.ops}
    cfg = load_model_config("gpt2-tiny")
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    # every linear of the model: q/k/v, output projection, MLP up and down in each block, and the output layer
    expected = 2 * B * T * (L * (C * 3 * C + C * C + C * 4 * C + 4 * C * C) + C * V)
    fwd, bwd = ops_by[("linear", "forward")], ops_by[("linear", "backward")]
    assert fwd.flops == expected and bwd.flops == 2 * expected
    assert fwd.calls == bwd.calls == 4 * L + 1  # the backward of each call was found (by sequence number)
    assert fwd.time_us > 0 and bwd.time_us > 0 and fwd.bound in ("compute", "memory")
    assert ("qkv_attention", "backward") in ops_by and ("layer_norm", "forward") in ops_by  # GPT-2: packed
    assert ("cross_entropy", "forward") in ops_by
    # on the CPU, the aten::mm rows have the profiler's FLOP count: together, every linear's matmuls
    mm = next(k for k in p.kernels if k.name == "aten::mm")
    assert mm.flops_source == "profiler" and mm.bound and mm.category == "matmul"
    assert 0 <= p.no_estimate_share < 1


def test_report_and_comparison(step_profile):
    p, _ = step_profile
    text = p.report(top_k=5)
    assert "what limits it" in text and "aten::mm" in text and "idle" in text
    other = dataclasses.replace(p, backend="triton")
    cmp = format_comparison([p, other], top_k=3)
    assert "torch ms" in cmp and "triton ms" in cmp
    assert limits_line(p).startswith("torch: ") and limits_line(other) in cmp
    assert ("compute-bound" in limits_line(p)) or ("memory-bound" in limits_line(p))


def test_cli(tmp_path, capsys):
    out = tmp_path / "prof"
    rc = profile_main(["--config", "gpt2-tiny", "--backend", "torch", "--device", "cpu", "--batch", "1", "--seq", "8",
                       "--steps", "1", "--warmup", "0", "--out", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "what limits it" in printed
    for name in ("kernels.csv", "categories.csv", "ops.csv", "summary.json", "trace.json", "categories.png"):
        assert (out / name).is_file(), name
    assert profile_main(["--config", "no-such-config", "--device", "cpu", "--out", str(out)]) == 2
    assert profile_main(["--config", "gpt2-tiny", "--compare", "torch", "--out", str(out)]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gpu_step_profile(backend, tmp_path):
    p = profile_training_step("gpt2-tiny", backend, steps=2, warmup=2, batch_size=4, seq_len=128, device="cuda",
                              out_dir=tmp_path)  # fmt: skip
    assert p.time_kind == "device" and p.precision == "bf16"
    assert abs(sum(k.share for k in p.kernels) - 1) < 1e-6
    assert abs(sum(c.share for c in p.categories) - 1) < 1e-6
    cats = {c.category: c.time_us for c in p.categories}
    assert cats["matmul"] > 0 and cats["attention"] > 0 and cats["optimizer"] > 0
    assert 0 < p.busy_ms <= p.wall_ms * 1.01
    ops_by = {(o.op, o.phase): o for o in p.ops}
    assert ops_by[("linear", "forward")].time_us > 0 and ops_by[("linear", "backward")].time_us > 0
    # GPT-2 runs its attention as one fused op from the qkv projection (ops.qkv_attention)
    assert ops_by[("qkv_attention", "backward")].bound in ("compute", "memory")
    assert any(k.flops_source for k in p.kernels), "no kernel got a FLOPs estimate"
    json.loads((tmp_path / "trace.json").read_text())


def test_kernel_rows_add_up_to_the_categories(step_profile):
    """A kernel name that runs in two categories (a GEMM in the layers and in the loss) is two rows."""
    p, _ = step_profile
    per_cat = {}
    for k in p.kernels:
        per_cat[k.category] = per_cat.get(k.category, 0.0) + k.total_us
    for c in p.categories:
        if c.category != "idle":
            assert abs(per_cat.get(c.category, 0.0) - c.time_us) <= 1e-6 * max(1.0, c.time_us), c.category
    assert len({(k.name, k.category) for k in p.kernels}) == len(p.kernels)


# --- reading PyTorch 2.11's events (no GPU needed: the events are built by hand) --------------


def _event(name, start, end, *, id, parent=None, kernels=(), flops=0, shapes=(), dtypes=(), device="CPU"):
    from types import SimpleNamespace as NS

    return NS(name=name, device_type=NS(name=device), time_range=NS(start=start, end=end), id=id,
              cpu_parent=parent, is_async=False, kernels=[NS(name=k, duration=d) for k, d in kernels], flops=flops,
              input_shapes=list(shapes), input_dtypes=list(dtypes), sequence_nr=-1, is_user_annotation=False,
              self_cpu_time_total=end - start)  # fmt: skip


def _fake_gemm_events(M, N, K, dtypes):
    mm = _event("aten::mm", 0.0, 10.0, id=7, kernels=[("nvjet_gemm", 5.0)], flops=2 * M * N * K,
                shapes=[[M, K], [K, N]], dtypes=dtypes)  # fmt: skip
    buf = _event("Activity Buffer Request", 1.0, 2.0, id=7, parent=mm, kernels=[("nvjet_gemm", 5.0)])
    launch = _event("cuLaunchKernelEx", 2.0, 3.0, id=8, parent=mm)
    return [mm, buf, launch, _event("nvjet_gemm", 20.0, 25.0, id=9, device="CUDA")]


def test_old_events_without_dtypes_take_the_steps_element_size():
    """PyTorch 2.11 records no input dtypes: a GEMM's bytes then use the step's precision."""
    from llm_course.profiling.events import attribute
    from llm_course.profiling.tables import kernel_rows

    M, N, K = 256, 128, 64
    (row,) = kernel_rows(attribute(_fake_gemm_events(M, N, K, dtypes=[]), [], on_device=True, default_element_size=2))
    assert row.flops_source == "profiler" and row.bytes == 2 * (M * K + K * N + M * N)
    (row,) = kernel_rows(attribute(_fake_gemm_events(M, N, K, dtypes=[]), [], on_device=True))
    assert row.flops_source == ""  # no element size known: no estimate rather than a wrong one


def test_old_events_count_a_kernel_once_and_give_it_its_flops():
    """In PyTorch 2.11 a GEMM's kernel is listed by its aten::mm *and* by the profiler's bookkeeping
    event inside it, with the same id; counted twice it would double the time and lose its FLOPs."""
    from llm_course.profiling.events import attribute
    from llm_course.profiling.tables import kernel_rows

    M = N = K = 256
    mm = _event("aten::mm", 0.0, 10.0, id=7, kernels=[("nvjet_gemm", 5.0)], flops=2 * M * N * K,
                shapes=[[M, K], [K, N]], dtypes=["c10::BFloat16", "c10::BFloat16"])  # fmt: skip
    buf = _event("Activity Buffer Request", 1.0, 2.0, id=7, parent=mm, kernels=[("nvjet_gemm", 5.0)])
    launch = _event("cuLaunchKernelEx", 2.0, 3.0, id=8, parent=mm)
    gpu = _event("nvjet_gemm", 20.0, 25.0, id=9, device="CUDA")
    att = attribute([mm, buf, launch, gpu], [], on_device=True)
    assert [c.name for c in att.calls] == ["nvjet_gemm"]
    (row,) = kernel_rows(att)
    assert row.flops == 2 * M * N * K and row.flops_source == "profiler" and row.calls == 1
