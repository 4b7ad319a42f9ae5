"""Stage 0 exercises: count the work (FLOPs) and the memory traffic (bytes) of an op.

The course's conventions (the same as ``llm_course/measure/flops.py``):

* a FLOP is one floating-point operation: a multiply is 1, an add is 1, so a
  multiply-add is 2; an ``exp``, a comparison and a division count 1 each;
* bytes are the *minimum* traffic: each input read once from memory, each
  output written once, times the size of one element (``dtype_bytes``:
  4 for float32, 2 for bfloat16 and float16, 1 for int8).

All sizes are element counts (positive ints); return an int.
"""


def matmul_flops(M: int, N: int, K: int) -> int:
    """FLOPs of ``C = A @ B`` with A of shape (M, K) and B of shape (K, N).

    C has M*N elements; each is a sum of K products, and each product is
    added to a running sum.

    Hint: count the multiplies and the adds separately, then add them up.
    """
    # BEGIN EXERCISE count_matmul
    # stub raises: "count the FLOPs of an (M, K) @ (K, N) matmul"
    return 2 * M * N * K
    # END EXERCISE count_matmul


def matmul_bytes(M: int, N: int, K: int, dtype_bytes: int) -> int:
    """Minimum bytes moved by ``C = A @ B``: A (M, K) and B (K, N) read once, C (M, N) written once.

    All three matrices have elements of ``dtype_bytes`` bytes.

    Hint: three matrices, each touched exactly once.
    """
    # BEGIN EXERCISE count_matmul
    # stub raises: "count the bytes a matmul reads and writes"
    return (M * K + K * N + M * N) * dtype_bytes
    # END EXERCISE count_matmul


def softmax_flops(rows: int, cols: int) -> int:
    """FLOPs of a softmax over each row of a (rows, cols) tensor.

    Count 5 FLOPs per element: 1 comparison for the row maximum, 1 subtraction
    (``x - max``), 1 ``exp``, 1 addition into the row's sum, 1 division by that sum.

    Hint: the per-element count times the number of elements.
    """
    # BEGIN EXERCISE count_softmax
    # stub raises: "count the FLOPs of a row-wise softmax"
    return 5 * rows * cols
    # END EXERCISE count_softmax


def softmax_bytes(rows: int, cols: int, dtype_bytes: int) -> int:
    """Minimum bytes moved by a softmax over the rows of a (rows, cols) tensor.

    The input is read once and the output (same shape, same dtype) written once:
    a fused kernel keeps each row on chip while it computes the max and the sum.

    Hint: two tensors of rows*cols elements.
    """
    # BEGIN EXERCISE count_softmax
    # stub raises: "count the bytes a row-wise softmax reads and writes"
    return 2 * rows * cols * dtype_bytes
    # END EXERCISE count_softmax


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool = False) -> int:
    """Forward FLOPs of attention ``softmax(Q @ K^T / sqrt(D)) @ V``.

    Shapes: Q is (batch, heads, q_len, head_dim); K and V are
    (batch, heads, kv_len, head_dim). Per batch element and head there are two
    matmuls: the scores ``Q @ K^T`` -- (q_len, head_dim) times (head_dim, kv_len) --
    and ``P @ V`` -- (q_len, kv_len) times (kv_len, head_dim). Count only these
    matmuls (leave out the softmax and the scaling, as FlashAttention's
    benchmarks do).

    With ``causal=True`` a query may not look at later keys: about half of the
    scores are masked and a good kernel skips them. Count exactly half of the
    non-causal FLOPs.

    Hint: use 2*M*N*K for each matmul; the answer is a multiple of
    batch * heads * q_len * kv_len * head_dim.
    """
    # BEGIN EXERCISE count_attention
    # stub raises: "count the forward FLOPs of attention"
    flops = 4 * batch * heads * q_len * kv_len * head_dim
    return flops // 2 if causal else flops
    # END EXERCISE count_attention
