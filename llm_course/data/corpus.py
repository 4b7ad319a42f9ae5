"""The course's default text corpus: the Python standard library's own source code.

Every machine that runs Python has it, so the course can train a tokenizer
and a small model with no download. It is real, varied text: code, comments,
and long English docstrings.

* **What:** the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, one
  document per module, read as UTF-8, in sorted order of their path (so the
  corpus is deterministic for a given Python version).
* **Left out:** test suites (``test``, ``tests``, ``idle_test``), installed
  packages (``site-packages``), ``idlelib``, the ``encodings`` tables, generated
  files (``pydoc_data``, ``_sysconfigdata*``, ``html/entities.py``,
  ``stringprep.py``), ``lib2to3``, ``ensurepip``, and any file over
  ``max_file_bytes``.
* **How much:** documents are taken in order until ``max_bytes`` (UTF-8) would
  be exceeded: 5 MB by default.
* **Licence:** the Python standard library is distributed under the Python
  Software Foundation License (PSF License Agreement, version 2), a permissive,
  GPL-compatible licence; its full text is ``LICENSE.txt`` in the same folder.

Different Python versions ship slightly different sources, so the corpus
differs a little between versions. What the course stores (the default
tokenizer in ``configs/tokenizer/`` and ``data/sample_pretrain.jsonl``) was
built once and is the same for everyone.

Documents are written to and read from JSON Lines, one ``{"text": ...}`` object
a line, the format the pretraining stage reads::

    python -m llm_course.data.corpus ~/corpus.jsonl                   # the default corpus (several MB)
    python -m llm_course.data.corpus data/sample_pretrain.jsonl --sample
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

from llm_course import paths

DEFAULT_MAX_BYTES = 5_000_000
DEFAULT_MAX_FILE_BYTES = 300_000
SAMPLE_MAX_BYTES = 200_000  # the size limit of data/sample_pretrain.jsonl

EXCLUDED_DIRS = frozenset(
    {
        "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
        "idlelib", "encodings", "pydoc_data", "lib2to3", "ensurepip", "lib-dynload",
    }
)  # fmt: skip
EXCLUDED_FILES = frozenset({"html/entities.py", "stringprep.py"})
EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")  # generated, machine-specific


def stdlib_dir() -> Path:
    """The folder of the standard library's sources of the running Python."""
    path = Path(sysconfig.get_paths()["stdlib"])
    if not (path / "os.py").is_file():
        raise FileNotFoundError(
            "the Python standard library's sources were not found (no os.py in the stdlib folder); "
            "this Python installation ships without them"
        )
    return path


def _excluded(rel: Path, size: int, max_file_bytes: int) -> bool:
    parts = rel.parts
    if any(p in EXCLUDED_DIRS or p.startswith(EXCLUDED_PREFIXES) for p in parts):
        return True
    return rel.as_posix() in EXCLUDED_FILES or size > max_file_bytes or size == 0


def iter_files(root: str | os.PathLike | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Path]:
    """The corpus's ``.py`` files under ``root`` (default: the stdlib), in sorted order of their relative path."""
    root = Path(root) if root is not None else stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(EXCLUDED_PREFIXES)]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                if not _excluded(rel_dir / name, path.stat().st_size, max_file_bytes):
                    found.append((rel_dir / name).as_posix())
    for rel in sorted(found):
        yield root / rel


def iter_documents(
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    root: str | os.PathLike | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[str]:
    """Yield the corpus one document (one module's source) at a time.

    Args:
        max_bytes: stop before the UTF-8 total would exceed this (None: no limit).
        root: the folder to read (default: the standard library).
        max_file_bytes: skip files larger than this (generated tables, mostly).
    Yields:
        str, each a whole ``.py`` file; files that are not valid UTF-8 are skipped.
    """
    total = 0
    for path in iter_files(root, max_file_bytes):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        size = len(text.encode("utf-8"))
        if max_bytes is not None and total + size > max_bytes:
            return
        total += size
        yield text


def default_corpus_text(max_bytes: int | None = DEFAULT_MAX_BYTES, separator: str = "\n") -> str:
    """The whole corpus as one string, documents joined by ``separator``."""
    return separator.join(iter_documents(max_bytes))


def sample_documents(max_jsonl_bytes: int = SAMPLE_MAX_BYTES, max_doc_bytes: int = 12_000, every: int = 5) -> list[str]:
    """A small, varied slice of the corpus: every ``every``-th document of at most
    ``max_doc_bytes``, until the JSON Lines file would exceed ``max_jsonl_bytes``."""
    docs, total = [], 0
    small = (d for d in iter_documents(None) if 200 <= len(d.encode("utf-8")) <= max_doc_bytes)
    for i, doc in enumerate(small):
        if i % every:
            continue
        line_bytes = len(_jsonl_line(doc).encode("utf-8"))
        if total + line_bytes > max_jsonl_bytes:
            break
        docs.append(doc)
        total += line_bytes
    return docs


def _jsonl_line(text: str) -> str:
    return json.dumps({"text": text}, ensure_ascii=False) + "\n"


def write_jsonl(documents: Iterable[str], path: str | os.PathLike) -> int:
    """Write documents as JSON Lines, one ``{"text": ...}`` a line; returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in documents:
            f.write(_jsonl_line(doc))
            n += 1
    return n


def read_jsonl(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """Yield the ``field`` of every line of a JSON Lines file (blank lines are skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)[field]


def sample_path() -> Path:
    """``data/sample_pretrain.jsonl`` in the course repository."""
    return paths.data_dir() / "sample_pretrain.jsonl"


def load_sample() -> list[str]:
    """The documents of ``data/sample_pretrain.jsonl``: the same for everyone, whatever the Python version."""
    return list(read_jsonl(sample_path()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the default corpus (or the small sample) as JSON Lines.")
    parser.add_argument("out", help="the .jsonl file to write")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="corpus size limit (UTF-8 bytes)")
    parser.add_argument("--sample", action="store_true", help=f"write the small sample (under {SAMPLE_MAX_BYTES} bytes)")
    args = parser.parse_args(argv)
    docs = sample_documents() if args.sample else iter_documents(args.max_bytes)
    n = write_jsonl(docs, args.out)
    print(f"wrote {n} documents, {Path(args.out).stat().st_size} bytes, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
