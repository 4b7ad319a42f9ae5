"""Write data/sample_sft.jsonl: a few hundred short chat records for the SFT config of a laptop CPU.

    .venv/bin/python scripts/make_sample_sft.py          # rewrites data/sample_sft.jsonl (the same bytes every time)

Small tasks whose answer a program knows (reverse, sort, count, add, upper-case), some with a
system message, some of two turns, so that every part of the chat mask is exercised. The file
is deterministic (a fixed seed) and under 50 kB; it is the default data of
configs/train/sft-tiny-cpu.yaml.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORDS = ["cat", "dog", "sun", "tree", "fish", "bird", "moon", "star", "car", "book", "cup", "key", "hat", "box", "pen"]
SYSTEM = "Answer with the result only."


def task(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["reverse", "sort", "count", "add", "upper"])
    if kind == "reverse":
        items = rng.sample(WORDS, rng.randint(2, 4))
        return "Reverse: " + " ".join(items), " ".join(reversed(items))
    if kind == "sort":
        nums = [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]
        return "Sort: " + " ".join(map(str, nums)), " ".join(map(str, sorted(nums)))
    if kind == "count":
        items = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        return "Count: " + " ".join(items), str(len(items))
    if kind == "add":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return f"Add: {a} {b}", str(a + b)
    word = rng.choice(WORDS)
    return f"Upper: {word}", word.upper()


def sample_records(n: int = 300, seed: int = 0) -> list[dict]:
    """``n`` chat records (``{"messages": [...]}``), the same for the same seed."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        messages = [{"role": "system", "content": SYSTEM}] if i % 3 == 0 else []
        for _ in range(2 if i % 5 == 0 else 1):
            prompt, answer = task(rng)
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        records.append({"messages": messages})
    return records


def main(argv: list[str] | None = None) -> int:
    out = Path(__file__).resolve().parent.parent / "data" / "sample_sft.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in sample_records()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(lines)} records, {out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
