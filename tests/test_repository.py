"""What the repository itself promises: no large files in git (data/README.md), weights included."""

from __future__ import annotations

import subprocess

import pytest

from llm_course.paths import repo_root

MAX_TRACKED_BYTES = 5_000_000  # larger files belong outside git (weights are split into shards)


def test_no_tracked_file_is_over_5_mb():
    root = repo_root()
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    big = []
    for name in filter(None, out.decode().split("\0")):
        path = root / name
        if path.is_file() and path.stat().st_size > MAX_TRACKED_BYTES:
            big.append(f"{name} ({path.stat().st_size / 1e6:.1f} MB)")
    assert not big, "tracked files over 5 MB (split weights with --max-shard-size): " + ", ".join(big)


def test_shipped_models_load_from_their_shards():
    from llm_course.models.hf_weights import load_pretrained

    for name in ("course-lm", "course-lm-sft"):
        folder = repo_root() / "models" / name
        assert (folder / "model.safetensors.index.json").is_file()
        model = load_pretrained(folder)
        assert model.num_parameters() == 7_905_536
