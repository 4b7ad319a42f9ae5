"""Write data/sample_dpo.jsonl: small preference pairs for the DPO demo and tests (deterministic).

    python scripts/make_sample_dpo.py                    # data/sample_dpo.jsonl, 300 pairs
    python scripts/make_sample_dpo.py --out x.jsonl --n 50 --seed 1

Each record is ``{"prompt": ..., "chosen": ..., "rejected": ...}``: a short task a program can
check (reverse, sort, add, count, largest), ``chosen`` the right answer and ``rejected`` a
plausible wrong one (two neighbours swapped, off by one, the input given back). About one
prompt in six is a list of messages with a system turn, so both prompt forms are exercised.
The same seed gives the same file, byte for byte (``random.Random`` seeded with a string).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = ["cat", "dog", "sun", "map", "key", "pen", "box", "hat", "cup", "bird", "tree", "book"]


def swap_two(items: list, rng: random.Random) -> list:
    """The list with two neighbours swapped (a different list when it has two different neighbours)."""
    out = list(items)
    spots = [i for i in range(len(out) - 1) if out[i] != out[i + 1]]
    if spots:
        i = rng.choice(spots)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def make_pair(rng: random.Random) -> dict:
    task = rng.choice(["reverse", "sort", "add", "count", "max"])
    nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    if task == "reverse":
        prompt, right = f"Reverse the list: {' '.join(map(str, nums))}", nums[::-1]
        wrong = rng.choice([nums, swap_two(right, rng)])
        chosen, rejected = " ".join(map(str, right)), " ".join(map(str, wrong))
    elif task == "sort":
        prompt, right = f"Sort the list: {' '.join(map(str, nums))}", sorted(nums)
        wrong = rng.choice([nums, swap_two(right, rng), right[::-1]])
        chosen, rejected = " ".join(map(str, right)), " ".join(map(str, wrong))
    elif task == "add":
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        prompt, chosen, rejected = f"Add: {a} {b}", str(a + b), str(a + b + rng.choice([-1, 1, 10]))
    elif task == "count":
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
        prompt, chosen, rejected = f"How many items: {' '.join(words)}", str(len(words)), str(len(words) + rng.choice([-1, 1]))
    else:
        prompt, chosen = f"Largest of: {' '.join(map(str, nums))}", str(max(nums))
        rejected = str(sorted(set(nums))[-2]) if len(set(nums)) > 1 else str(max(nums) + 1)
    if chosen == rejected:  # a reversal of a palindrome, say: draw again
        return make_pair(rng)
    if rng.random() < 1 / 6:
        prompt = [{"role": "system", "content": "Answer with the result only."}, {"role": "user", "content": prompt}]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "sample_dpo.jsonl"))
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(f"sample_dpo-{args.seed}")
    lines = [json.dumps(make_pair(rng), ensure_ascii=False) for _ in range(args.n)]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.n} preference pairs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
