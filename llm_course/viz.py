"""Pictures of how a Triton kernel splits its work: programs, blocks, masks.

    from llm_course.viz import plot_programs
    fig = plot_programs(n=10, block_size=4, shape=(6, 10), block=(4, 4))

A launch starts a grid of **programs**; each owns one **block** of the data,
found from its ``tl.program_id``. The data rarely divides into whole blocks, so
the last block along each dimension runs past the end, and a **mask** switches
those lanes off. :func:`draw_programs_1d` draws this for a vector (the add
kernel: ``offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)``,
``mask = offsets < n``), :func:`draw_programs_2d` for a matrix cut into tiles
(the matmul kernel: one program per ``(BLOCK_M, BLOCK_N)`` tile, masks on the
rows past M and the columns past N). Colours are programs; hatched grey cells
are lanes that exist in a block but not in the data: masked.
"""

from __future__ import annotations

import math

MASKED = dict(facecolor="0.92", edgecolor="0.55", hatch="///", lw=0.6)


def _color(i: int):
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def draw_programs_1d(ax, n: int, block_size: int) -> int:
    """Draw a vector of ``n`` elements cut into blocks of ``block_size``; returns the number of programs.

    Element i is a unit square at x = i, coloured by the program that owns it;
    the lanes of the last block past ``n - 1`` are hatched (masked).
    """
    from matplotlib.patches import Rectangle

    if n < 1 or block_size < 1:
        raise ValueError(f"draw_programs_1d: n and block_size must be at least 1, got n={n}, block_size={block_size}")
    programs = math.ceil(n / block_size)
    for pid in range(programs):
        start = pid * block_size
        for lane in range(block_size):
            i = start + lane
            real = i < n
            style = dict(facecolor=_color(pid), edgecolor="white", alpha=0.85, lw=1.5) if real else MASKED
            ax.add_patch(Rectangle((i, 0), 1, 1, **style))
            ax.text(i + 0.5, 0.5, str(i), ha="center", va="center", fontsize=8, color="black" if real else "0.45")
        ax.text(start + block_size / 2, 1.25, f"program {pid}", ha="center", va="bottom", fontsize=9, color=_color(pid))
        ax.text(start + block_size / 2, -0.25, f"offsets {start}..{start + block_size - 1}", ha="center", va="top",
                fontsize=7, color="0.3")  # fmt: skip
    masked = programs * block_size - n
    if masked:
        ax.annotate(f"mask = offsets < {n}:\n{masked} lanes off", (n + masked / 2, 1.0), xytext=(n + masked / 2, 2.3),
                    ha="center", fontsize=8, arrowprops=dict(arrowstyle="->", color="0.4"))  # fmt: skip
    ax.set_xlim(-0.5, programs * block_size + 0.5)
    ax.set_ylim(-1.0, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"a vector of n = {n}, BLOCK_SIZE = {block_size}: {programs} programs", fontsize=10)
    return programs


def draw_programs_2d(ax, shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    """Draw an (M, N) matrix cut into (BLOCK_M, BLOCK_N) tiles; returns the grid (programs along M, along N).

    Each tile is one program, numbered row by row, labelled with its
    ``(pid_m, pid_n)``; cells of a tile past row M - 1 or column N - 1 are hatched (masked).
    """
    from matplotlib.patches import Rectangle

    (M, N), (BM, BN) = shape, block
    if min(M, N, BM, BN) < 1:
        raise ValueError(f"draw_programs_2d: shape and block must be positive, got shape={shape}, block={block}")
    grid_m, grid_n = math.ceil(M / BM), math.ceil(N / BN)
    for pm in range(grid_m):
        for pn in range(grid_n):
            pid = pm * grid_n + pn
            for r in range(pm * BM, (pm + 1) * BM):
                for c in range(pn * BN, (pn + 1) * BN):
                    real = r < M and c < N
                    style = dict(facecolor=_color(pid), edgecolor="white", alpha=0.85, lw=1.0) if real else MASKED
                    ax.add_patch(Rectangle((c, r), 1, 1, **style))
            ax.add_patch(Rectangle((pn * BN, pm * BM), BN, BM, fill=False, edgecolor="black", lw=1.5))
            ax.text(pn * BN + BN / 2, pm * BM + BM / 2, f"program {pid}\n(pid_m={pm}, pid_n={pn})", ha="center",
                    va="center", fontsize=7, bbox=dict(boxstyle="round", fc="white", alpha=0.8, lw=0))  # fmt: skip
    ax.add_patch(Rectangle((0, 0), N, M, fill=False, edgecolor="red", lw=1.5, ls="--"))
    ax.text(N, -0.3, f"{M} x {N}", color="red", ha="right", va="bottom", fontsize=8)
    ax.set_xlim(-0.5, grid_n * BN + 0.5)
    ax.set_ylim(grid_m * BM + 0.5, -1.5)  # row 0 at the top, as a matrix is written
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"a {M} x {N} matrix, tiles of {BM} x {BN}: {grid_m} x {grid_n} programs\n"
                 "hatched: masked rows and columns", fontsize=10)  # fmt: skip
    return grid_m, grid_n


def plot_programs(n: int = 10, block_size: int = 4, shape: tuple[int, int] = (6, 10), block: tuple[int, int] = (4, 4)):
    """Both pictures side by side (vector, then matrix); returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw=dict(width_ratios=[1.2, 1]))
    draw_programs_1d(ax1, n, block_size)
    draw_programs_2d(ax2, shape, block)
    fig.tight_layout()
    return fig
