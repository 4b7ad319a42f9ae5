"""Unit tests of llm_course.data.corpus: the default corpus, the sample, JSON Lines."""

from __future__ import annotations

import json

import pytest

from llm_course.data import corpus
from llm_course.tokenizer import build_default


def _write(path, text="x = 1\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_iter_files_excludes_tests_packages_and_generated_files(tmp_path):
    for rel in [
        "os.py", "b/c.py", "a.py", "b/a.py", "test/test_os.py", "b/tests/t.py", "site-packages/pkg/m.py",
        "idlelib/x.py", "encodings/cp1252.py", "_sysconfigdata__linux.py", "pydoc_data/topics.py",
        "html/entities.py", "stringprep.py", "README.txt", "empty.py",
    ]:  # fmt: skip
        _write(tmp_path / rel, "" if rel == "empty.py" else "x = 1\n")
    _write(tmp_path / "big.py", "x = 1\n" * 100)
    files = [p.relative_to(tmp_path).as_posix() for p in corpus.iter_files(tmp_path, max_file_bytes=500)]
    assert files == ["a.py", "b/a.py", "b/c.py", "os.py"]


def test_iter_documents_respects_max_bytes(tmp_path):
    for i in range(5):
        _write(tmp_path / f"m{i}.py", f"# module {i}\n" + "pass\n" * 10)
    _write(tmp_path / "bad.py")
    (tmp_path / "bad.py").write_bytes(b"\xff\xfe not utf-8")
    docs = list(corpus.iter_documents(None, root=tmp_path))
    assert [d.splitlines()[0] for d in docs] == [f"# module {i}" for i in range(5)]  # bad.py skipped
    size = len(docs[0].encode())
    assert len(list(corpus.iter_documents(3 * size, root=tmp_path))) == 3
    assert len(list(corpus.iter_documents(3 * size - 1, root=tmp_path))) == 2


def test_default_corpus_is_deterministic_and_capped():
    small = list(corpus.iter_documents(300_000))
    assert small == list(corpus.iter_documents(300_000))
    assert small and sum(len(d.encode("utf-8")) for d in small) <= 300_000
    text = corpus.default_corpus_text(300_000)
    assert text == "\n".join(small)
    full = list(corpus.iter_documents())
    total = sum(len(d.encode("utf-8")) for d in full)
    assert 1_000_000 < total <= corpus.DEFAULT_MAX_BYTES
    assert not any("import unittest\n" in d and "class Test" in d for d in full[:50])  # no test suites


def test_jsonl_round_trip(tmp_path):
    docs = ['print("hi")\n', "naïve 😀\n\ttab \\ backslash", ""]
    path = tmp_path / "docs.jsonl"
    assert corpus.write_jsonl(docs, path) == 3
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(set(json.loads(line)) == {"text"} for line in lines)
    assert list(corpus.read_jsonl(path)) == docs


def test_stored_sample():
    path = corpus.sample_path()
    assert path.stat().st_size <= corpus.SAMPLE_MAX_BYTES
    docs = corpus.load_sample()
    assert len(docs) >= 20 and all(isinstance(d, str) and d for d in docs)
    for line in path.read_text(encoding="utf-8").splitlines():
        assert list(json.loads(line)) == ["text"]


def test_build_default_tokenizer_small(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    assert build_default.main(["--vocab-size", "400", "--out", str(tmp_path), "--max-bytes", "200000"]) == 0
    from llm_course.tokenizer.hf import load_tokenizer

    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 400 and tok.eos_token_id == 0
    assert "bytes per token" in capsys.readouterr().out
