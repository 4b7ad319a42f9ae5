"""``llm-course profile``: profile training steps of a config on a backend, or compare backends.

    llm-course profile --config gpt2-124m --backend triton --steps 3 --out profiles/gpt2-124m/triton
    llm-course profile --config gpt2-124m --compare torch,triton --out profiles/gpt2-124m
    llm-course profile --config gpt2-tiny --device cpu --batch 2 --seq 32 --steps 1   # on a laptop

``--config`` is a train config (configs/train: its model, batch, sequence length,
micro-batches) or a model config (configs/model). Prints the report (time by category,
the top kernels, the course's ops on the roofline, what limits the step) and writes to
``--out``: kernels.csv, categories.csv, ops.csv, summary.json, trace.json, categories.png,
roofline.png; with ``--compare``, one folder per backend plus compare.txt, compare.json
and categories_compare.png. Exit status 0, or 2 for a bad config or option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a configs/train name (gpt2-124m), a model config name (gpt2-tiny) or a .yaml")
    p.add_argument("--backend", default=None, choices=["torch", "triton"], help="default: the train config's, else torch")
    p.add_argument("--compare", default=None, metavar="B1,B2", help="profile several backends side by side: torch,triton")
    p.add_argument("--steps", type=int, default=2, help="profiled steps (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (default 1)")
    p.add_argument("--batch", type=int, default=None, help="sequences per micro-batch (default: the config's)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the config's)")
    p.add_argument("--micro-batches", type=int, default=None, help="micro-batches per step (default: the config's)")
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--fused-loss", action="store_true", help="the loss through ops.fused_linear_cross_entropy")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the GPU when there is one)")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the files (default: profiles/<config>)")
    p.add_argument("--top", type=int, default=15, help="kernels shown in the printed table")


def run(args) -> int:
    from llm_course.measure.roofline import measure_ceilings
    from llm_course.profiling.report import format_comparison, write_comparison
    from llm_course.profiling.training_step import profile_training_step

    backends = [b.strip() for b in args.compare.split(",") if b.strip()] if args.compare else [args.backend]
    bad = [b for b in backends if b not in ("torch", "triton", None)]
    if bad or (args.compare and len(backends) < 2):
        print(f"error: --compare takes two or more of torch,triton; got {args.compare!r}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("profiles") / Path(str(args.config)).stem
    ceilings = None
    if args.compare:  # one measurement of the roofs for every backend
        ceilings = measure_ceilings(args.device, quick=(args.device or "").startswith("cpu"))
    profiles = []
    for backend in backends:
        try:
            p = profile_training_step(
                args.config, backend, steps=args.steps, warmup=args.warmup, batch_size=args.batch, seq_len=args.seq,
                micro_batches=args.micro_batches, precision=args.precision, fused_loss=args.fused_loss,
                device=args.device, ceilings=ceilings, out_dir=out / p_name(backend) if args.compare else out)  # fmt: skip
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(p.report(args.top), flush=True)
        print()
        profiles.append(p)
    if args.compare:
        write_comparison(profiles, out)
        print(format_comparison(profiles, args.top))
    print(f"\nwritten to {out}/")
    return 0


def p_name(backend: str | None) -> str:
    return backend or "default"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
