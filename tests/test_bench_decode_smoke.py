"""Smoke test of ``llm-course bench decode`` (--quick, into a temporary folder).

It checks that the script runs end to end, measures every implementation and writes
its files, not any speed.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch


@pytest.fixture(scope="module")
def decode_run(tmp_path_factory):
    from llm_course.bench import decode

    out = tmp_path_factory.mktemp("bench_decode")
    assert decode.main(["--quick", "--out", str(out), "--targets"]) == 0
    return out


def test_decode_bench_writes_its_files(decode_run):
    for name in ("decode.csv", "decode_meta.json", "decode_gbs.png"):
        assert (decode_run / name).stat().st_size > 0, name
    meta = json.loads((decode_run / "decode_meta.json").read_text())
    assert meta["benchmark"] == "decode" and meta["ceilings"]["bandwidth_gbs"] > 0


def test_decode_bench_measures_every_implementation(decode_run):
    from llm_course.bench.decode import IMPLS, decode_bytes

    rows = list(csv.DictReader((decode_run / "decode.csv").open()))
    assert {r["impl"] for r in rows} == set(IMPLS)
    assert {r["size"] for r in rows} == {"S=32", "S=48"}
    for r in rows:
        assert r["error"] == "" and float(r["ms"]) > 0 and math.isfinite(float(r["gbs"])), r
        assert float(r["bytes"]) == decode_bytes(1, 4, 2, int(r["size"][2:]), 16, torch.float32)
        assert math.isfinite(float(r["vs_torch"]))


def test_decode_bench_redraws_from_its_files(decode_run):
    from llm_course.bench import decode

    (decode_run / "decode_gbs.png").unlink()
    assert decode.main(["--redraw", "--out", str(decode_run)]) == 0
    assert (decode_run / "decode_gbs.png").exists()


def test_decode_bench_is_a_command():
    from llm_course.cli import BENCHES

    assert BENCHES["decode"] == "llm_course.bench.decode"
