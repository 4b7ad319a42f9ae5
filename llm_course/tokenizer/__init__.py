"""Text to tokens: byte-level BPE from scratch (``bpe``), with Hugging Face ``tokenizers`` (``hf``),
checked ids and streamed text for both (``stream``), and padded tensor batches (``batch``).

``import llm_course.tokenizer`` is cheap: ``tokenizers`` is imported only by ``hf``.
"""

from llm_course.tokenizer.batch import pad_batch
from llm_course.tokenizer.bpe import ByteBPE, decode, encode, get_pair_counts, merge


def load_tokenizer(path=None):
    """The course's default tokenizer (``configs/tokenizer/``); see :func:`llm_course.tokenizer.hf.load_tokenizer`."""
    from llm_course.tokenizer.hf import load_tokenizer as _load

    return _load(path)


__all__ = ["ByteBPE", "decode", "encode", "get_pair_counts", "load_tokenizer", "merge", "pad_batch"]
