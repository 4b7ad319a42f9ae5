"""llm_course.viz: the picture of programs, blocks and masks that notebook 01a shows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from llm_course.viz import draw_programs_1d, draw_programs_2d, plot_programs  # noqa: E402


def hatched(ax):
    return [p for p in ax.patches if p.get_hatch()]


def test_vector_programs_and_masked_tail():
    fig, ax = plt.subplots()
    assert draw_programs_1d(ax, 10, 4) == 3
    assert len(hatched(ax)) == 2  # lanes 10 and 11 of the last block
    texts = [t.get_text() for t in ax.texts]
    assert {"program 0", "program 1", "program 2"} <= set(texts) and any("offsets < 10" in t for t in texts)
    plt.close(fig)
    fig, ax = plt.subplots()
    assert draw_programs_1d(ax, 8, 4) == 2 and hatched(ax) == []  # whole blocks: nothing masked
    assert not any("mask" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_matrix_tiles_and_masked_edges():
    fig, ax = plt.subplots()
    assert draw_programs_2d(ax, (6, 10), (4, 4)) == (2, 3)
    assert len(hatched(ax)) == 2 * 3 * 16 - 6 * 10  # every cell of the tile grid outside the matrix
    assert sum("pid_m=1, pid_n=2" in t.get_text() for t in ax.texts) == 1
    plt.close(fig)


def test_bad_sizes_are_refused_by_name():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="block_size"):
        draw_programs_1d(ax, 10, 0)
    with pytest.raises(ValueError, match="shape"):
        draw_programs_2d(ax, (0, 4), (2, 2))
    plt.close(fig)


def test_plot_programs_draws_both():
    fig = plot_programs()
    assert len(fig.axes) == 2
    plt.close(fig)
