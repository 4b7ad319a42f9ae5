"""Rebuild the course's default tokenizer in ``configs/tokenizer/``.

    llm-course build-tokenizer                       # vocabulary of 8192, the default corpus
    python -m llm_course.tokenizer.build_default --vocab-size 4096 --out /some/folder

It trains a byte-level BPE (Hugging Face ``tokenizers``) on the default corpus,
the Python standard library's sources (``llm_course.data.corpus``), and writes
``tokenizer.json`` and ``tokenizer_config.json``. It takes a few seconds.

The stored tokenizer was built with Python 3.11; another Python version has a
slightly different standard library and so gives a slightly different
tokenizer. Models and checkpoints of the course assume the stored one: rebuild
only if you mean to.
"""

from __future__ import annotations

import argparse
import time

from llm_course.data.corpus import DEFAULT_MAX_BYTES, iter_documents
from llm_course.tokenizer.hf import DEFAULT_DIR, SPECIAL_TOKENS, load_tokenizer, save_tokenizer, train_hf_bpe

DEFAULT_VOCAB_SIZE = 8192


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course build-tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="number of ids (default 8192)")
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="output folder (default: configs/tokenizer)")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="corpus size (UTF-8 bytes)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    docs = list(iter_documents(args.max_bytes))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    tok = train_hf_bpe(docs, vocab_size=args.vocab_size, special_tokens=SPECIAL_TOKENS)
    out = save_tokenizer(tok, args.out)
    loaded = load_tokenizer(out)
    n_tokens = sum(len(ids) for ids in loaded.encode_batch(docs))
    print(f"trained on {len(docs)} documents ({n_bytes / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    print(f"vocabulary: {loaded.vocab_size} ids; special tokens {loaded.special_tokens}")
    print(f"compression on the corpus: {n_bytes / n_tokens:.2f} bytes per token")
    size_kb = (out / "tokenizer.json").stat().st_size / 1e3
    print(f"wrote tokenizer.json ({size_kb:.0f} kB) and tokenizer_config.json to {out.name}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
