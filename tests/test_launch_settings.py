"""The shared launch settings of ``backends/triton_ops/launch.py`` that ask the GPU, checked on any machine.

The GPU's answers (its SM count, its compute capability) are faked here, so that the
arithmetic and the caching run without one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llm_course.backends.triton_ops import launch


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two GPUs: 0 an H200 (132 SMs, 9.0), 1 an A100 (108 SMs, 8.0); GPU 1 current. Counts the questions asked."""
    asked = []
    props = {0: SimpleNamespace(multi_processor_count=132, major=9, minor=0),
             1: SimpleNamespace(multi_processor_count=108, major=8, minor=0)}  # fmt: skip

    def get_device_properties(index):
        asked.append(index)
        return props[index]

    monkeypatch.setattr(torch.cuda, "get_device_properties", get_device_properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(launch, "_GPU_FACTS", {})
    return asked


def test_sm_count_and_capability_are_asked_once_per_gpu(fake_gpus):
    h200, current = torch.device("cuda", 0), torch.device("cuda")
    assert launch.sm_count(h200) == 132 and launch.compute_capability(h200) == (9, 0)
    assert launch.sm_count(current) == 108 and launch.compute_capability(current) == (8, 0)  # no index: the current GPU
    for _ in range(3):
        launch.sm_count(h200), launch.compute_capability(current)
    assert fake_gpus == [0, 1]


def test_backward_programs_fill_the_gpu(fake_gpus, monkeypatch):
    monkeypatch.setattr(launch, "is_interpreter", lambda: False)
    h200 = torch.device("cuda", 0)
    assert launch.backward_programs(32768, 8, h200) == (263, 125)  # up to 2 programs of 8 warps per SM, rows dealt evenly
    assert launch.backward_programs(32768, 16, h200) == (132, 249)
    assert launch.backward_programs(100, 4, h200) == (100, 1)  # fewer rows than programs: one row each


def test_decode_attention_splits_make_one_wave_on_the_gpu(fake_gpus, monkeypatch):
    """The split-KV decode asks the same SM count: at batch 1, 8 kv heads, d128, about one program per SM."""
    from llm_course.backends.triton_ops import decode_attention as da

    monkeypatch.setattr(da, "is_interpreter", lambda: False)
    splits, size = da.split_plan(1, 8, 32768, torch.device("cuda", 0), D=128)
    assert size % 64 == 0 and splits * size >= 32768
    programs = 8 * splits
    assert abs(programs - da.PROGRAMS_PER_SM_D128 * 132) <= 8, f"{programs} programs for 132 SMs"
