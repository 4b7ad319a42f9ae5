"""Graded: counting FLOPs and bytes (exercises/stage0_measure/flops.py)."""

from __future__ import annotations

import random

import pytest

TOPIC = "stage0_measure/flops"

count_matmul = pytest.mark.exercise("count_matmul", stage=0, points=1, title="Count a matmul's FLOPs and bytes")
count_softmax = pytest.mark.exercise("count_softmax", stage=0, points=1, title="Count softmax's FLOPs and bytes")
count_attention = pytest.mark.exercise("count_attention", stage=0, points=2, title="Count attention's FLOPs")


def _sizes(r: random.Random, n: int, lo: int = 3, hi: int = 5000) -> list[int]:
    """n distinct random sizes, none a power of two."""
    out: list[int] = []
    while len(out) < n:
        s = r.randint(lo, hi)
        if s & (s - 1) and s not in out:
            out.append(s)
    return out


# --- matmul --------------------------------------------------------------------------


@count_matmul
def test_matmul_flops(impl, rng):
    f = impl.load(TOPIC).matmul_flops
    r = random.Random(rng.initial_seed())
    for _ in range(5):
        M, N, K = _sizes(r, 3)
        got = f(M, N, K)
        assert got != M * N * K, "a matmul does one multiply and one add per term: 2*M*N*K FLOPs, not M*N*K"
        assert got == 2 * M * N * K, (
            f"matmul_flops({M}, {N}, {K}) should be 2*M*N*K = {2 * M * N * K}: M*N outputs, each a sum of "
            f"K products (got {got})"
        )


@count_matmul
def test_matmul_bytes(impl, rng):
    f = impl.load(TOPIC).matmul_bytes
    r = random.Random(rng.initial_seed())
    for dtype_bytes in r.sample([2, 4, 8], 3):
        M, N, K = _sizes(r, 3)
        got = f(M, N, K, dtype_bytes)
        want = (M * K + K * N + M * N) * dtype_bytes
        assert got != (M * K + K * N) * dtype_bytes, (
            "count the output too: the (M, N) result C is written to memory once"
        )
        assert got != M * K + K * N + M * N, "bytes are elements times dtype_bytes, the size of one element"
        if got != want and got % (M * K + K * N + M * N) == 0:
            raise AssertionError(
                f"use the element size you are given: with dtype_bytes={dtype_bytes} each element is "
                f"{dtype_bytes} bytes (expected {want}, got {got})"
            )
        assert got == want, (
            f"matmul_bytes({M}, {N}, {K}, {dtype_bytes}) should read A (M x K) and B (K x N) once and write "
            f"C (M x N) once, times dtype_bytes: {want} (got {got})"
        )


# --- softmax -------------------------------------------------------------------------


@count_softmax
def test_softmax_flops(impl, rng):
    f = impl.load(TOPIC).softmax_flops
    r = random.Random(rng.initial_seed())
    for _ in range(5):
        rows, cols = _sizes(r, 2)
        got = f(rows, cols)
        want = 5 * rows * cols
        if got != want and got % (rows * cols) == 0:
            raise AssertionError(
                f"count 5 FLOPs per element: max, subtract, exp, sum, divide (got {got // (rows * cols)} per element)"
            )
        assert got == want, f"softmax_flops({rows}, {cols}) should be 5 * rows * cols = {want} (got {got})"


@count_softmax
def test_softmax_bytes(impl, rng):
    f = impl.load(TOPIC).softmax_bytes
    r = random.Random(rng.initial_seed())
    for dtype_bytes in r.sample([2, 4, 8], 3):
        rows, cols = _sizes(r, 2)
        n = rows * cols
        got = f(rows, cols, dtype_bytes)
        want = 2 * n * dtype_bytes
        assert got != n * dtype_bytes, "count the output too: softmax reads each element once and writes each once"
        assert got != 3 * n * dtype_bytes, (
            "count the minimum traffic: read the input once and write the output once "
            "(a fused kernel keeps each row on chip for the max and the sum)"
        )
        assert got != 2 * n, "bytes are elements times dtype_bytes, the size of one element"
        if got != want and got % (2 * n) == 0:
            raise AssertionError(
                f"use the element size you are given: with dtype_bytes={dtype_bytes} each element is "
                f"{dtype_bytes} bytes (expected {want}, got {got})"
            )
        assert got == want, (
            f"softmax_bytes({rows}, {cols}, {dtype_bytes}) should be one read and one write of every "
            f"element: {want} (got {got})"
        )


# --- attention -----------------------------------------------------------------------


def _attention_case(r: random.Random):
    batch, heads = r.randint(1, 9), r.randint(1, 33)
    head_dim = r.choice([48, 64, 80, 96, 112, 128])
    q_len, kv_len = sorted(_sizes(r, 2, 3, 3000))  # unequal lengths, keys at least as many as queries
    return batch, heads, q_len, kv_len, head_dim


def _attention_hints(got: int, batch, heads, q_len, kv_len, head_dim, causal: bool) -> None:
    full = 4 * batch * heads * q_len * kv_len * head_dim
    want = full // 2 if causal else full
    if got == want:
        return
    per_row = batch * heads * head_dim
    if got in (4 * per_row * q_len * q_len, 4 * per_row * kv_len * kv_len, 2 * per_row * q_len * q_len,
               2 * per_row * kv_len * kv_len):  # fmt: skip
        raise AssertionError(
            "the scores are q_len x kv_len: use both lengths, queries on one side and keys on the other"
        )
    if causal and got == full:
        raise AssertionError("with causal=True about half the scores are masked: count half the FLOPs")
    if got == want // 2:
        raise AssertionError(
            "attention does two matmuls, Q @ K^T and P @ V, each 2*q_len*kv_len*head_dim FLOPs per head"
        )
    if got == want // 4:
        raise AssertionError("each matmul does a multiply and an add per term: 2*M*N*K, and there are two of them")
    raise AssertionError(
        f"attention_flops({batch}, {heads}, {q_len}, {kv_len}, {head_dim}, causal={causal}) should be "
        f"{want}: 4*batch*heads*q_len*kv_len*head_dim{', halved for causal' if causal else ''} (got {got})"
    )


@count_attention
def test_attention_flops(impl, rng):
    f = impl.load(TOPIC).attention_flops
    r = random.Random(rng.initial_seed())
    for _ in range(5):
        case = _attention_case(r)
        _attention_hints(f(*case, causal=False), *case, causal=False)


@count_attention
def test_attention_flops_causal(impl, rng):
    f = impl.load(TOPIC).attention_flops
    r = random.Random(rng.initial_seed())
    for _ in range(5):
        case = _attention_case(r)
        _attention_hints(f(*case, causal=True), *case, causal=True)
