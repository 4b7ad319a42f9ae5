"""``llm-course download`` (llm_course/models/download.py): where weights go, and failing clearly offline.

The network is never touched: the Hub's offline mode (HF_HUB_OFFLINE=1) in a child
process, or ``snapshot_download`` replaced by a stand-in.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_course import paths
from llm_course.models import download


@pytest.fixture(autouse=True)
def weights_in_tmp(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_WEIGHTS, str(tmp_path / "w"))
    return tmp_path / "w"


def test_weights_dir_default_and_override(monkeypatch, tmp_path):
    assert paths.weights_dir() == tmp_path / "w"
    assert paths.weights_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(paths.ENV_WEIGHTS)
    assert paths.weights_dir() == paths.repo_root() / "weights"


def test_local_weights_only_for_a_complete_folder(weights_in_tmp):
    assert download.local_weights("gpt2") is None
    folder = weights_in_tmp / "gpt2"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert download.local_weights("gpt2") is None, "config.json without weights is not a model"
    (folder / "model.safetensors").write_bytes(b"")
    assert download.local_weights("gpt2") == folder
    q = weights_in_tmp / "qwen2-0.5b"
    q.mkdir()
    (q / "config.json").write_text("{}")
    (q / "model.safetensors.index.json").write_text("{}")
    assert download.local_weights("qwen2-0.5b") == q
    with pytest.raises(ValueError, match="gpt2, qwen2-0.5b"):
        download.local_weights("llama")


def test_download_asks_for_the_files_the_course_reads(monkeypatch, tmp_path):
    calls = []

    def fake(repo_id, local_dir, allow_patterns, ignore_patterns):
        calls.append((repo_id, local_dir, allow_patterns, ignore_patterns))
        os.makedirs(local_dir, exist_ok=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            open(os.path.join(local_dir, name), "w").close()
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    folder = download.download("qwen2-0.5b", tmp_path / "mine")
    assert folder == tmp_path / "mine" / "qwen2-0.5b"
    (repo, local_dir, allow, ignore), = calls
    assert repo == "Qwen/Qwen2-0.5B" and local_dir == folder
    for needed in ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json"):
        assert needed in allow
    assert not any(p.endswith((".bin", ".msgpack", ".h5", ".onnx")) or p == "*" for p in allow)
    assert "*/*" in ignore


def _raising(error):
    def fake(**kwargs):
        raise error

    return fake


def test_network_errors_become_one_sentence(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        import httpx2 as httpx  # the HTTP client of recent huggingface_hub versions
    except ImportError:
        httpx = pytest.importorskip("httpx")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # whatever this machine's environment says

    for error, why in [
        (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), "could not be reached"),
        (LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub"), "could not be reached"),
        (ConnectionError("reset by peer"), "could not be reached"),
    ]:
        monkeypatch.setattr("huggingface_hub.snapshot_download", _raising(error))
        with pytest.raises(download.DownloadError, match=why) as info:
            download.download("gpt2")
        assert "gpt2 (openai-community/gpt2)" in str(info.value) and "\n" not in str(info.value)


def test_other_errors_are_not_hidden(monkeypatch):
    monkeypatch.setattr("huggingface_hub.snapshot_download", _raising(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        download.download("gpt2")


def test_cli_offline_fails_with_one_sentence(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "llm_course.cli", "download", "gpt2", "--dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines == ["llm-course download: could not download gpt2 (openai-community/gpt2) from the Hugging Face Hub: "
                     "offline mode is on (HF_HUB_OFFLINE=1)."], result.stdout + result.stderr  # fmt: skip
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "gpt2" / "model.safetensors").exists()


def test_cli_refuses_an_unknown_model(capsys):
    from llm_course.cli import main

    with pytest.raises(SystemExit) as info:
        main(["download", "llama"])
    assert info.value.code == 2
    assert "gpt2" in capsys.readouterr().err
