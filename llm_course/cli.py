"""The ``llm-course`` command.

    llm-course doctor                     environment check
    llm-course grade [STAGE] [--impl X] [--topic T]... [--verbose] [--timeout S] [--strict]
                                          grade the exercises of a stage (or all)
    llm-course progress [--impl X]        points per stage
    llm-course bench kernels|layers|attention|decode|model|loss|train
                                          benchmarks, CSV and charts
    llm-course build-tokenizer            rebuild the course's default tokenizer
    llm-course download gpt2|qwen2-0.5b [--dir DIR]
                                          fetch pretrained weights from the Hugging Face Hub
    llm-course generate --model M --prompt TEXT [--greedy --chat ...]
                                          generate text, printed as it comes
    llm-course pretrain --config NAME|FILE [--set KEY=VALUE]... [--no-resume]
                                          pretrain a model (resumes from the run's latest checkpoint)
    llm-course sft --config NAME|FILE     supervised fine-tuning on chat data (stage 5)
    llm-course dpo --config NAME|FILE     direct preference optimization (stage 5)
    llm-course chat --model DIR           talk to a chat model: streamed replies, the KV cache
    llm-course eval --model DIR --eval F  accuracy on the course's held-out tasks
    llm-course profile --config NAME [--compare torch,triton]
                                          profile training steps: kernels, categories, roofline
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _grade(args) -> int:
    """Exit status: 0 graded (2 with a problem that stopped the grading, 1 when tests crashed or, with --strict, failed)."""
    from llm_course.grading.grader import grade

    try:
        report = grade(args.stage, args.impl, topics=args.topic, verbose=args.verbose, timeout=args.timeout)
    except KeyboardInterrupt:
        print("\nInterrupted: the tests were stopped.")
        return 130
    if report.problem:
        return 2
    if not report.complete:
        print("\nSome tests did not run to the end (see CRASHED, TIMED OUT or NOT RUN above): the grade is not final. "
              "Fix that first, then run this again.")  # fmt: skip
        return 1
    if report.all_passed:
        print("\nEverything passes. Well done!")
        return 0
    if not args.strict:
        hint = "" if args.verbose else " (--verbose shows each failing test and its inputs)"
        print(f"\nKeep going: fix the first failing exercise, then run this again{hint}.")
        return 0
    return 1


def _progress(args) -> int:
    from llm_course.grading.grader import progress

    report = progress(args.impl, timeout=args.timeout)
    if report.problem:
        return 2
    if not report.complete:
        return 1
    return 1 if args.strict and not report.all_passed else 0


BENCHES = {
    "kernels": "llm_course.bench.kernels",
    "layers": "llm_course.bench.layers",
    "attention": "llm_course.bench.attention",
    "decode": "llm_course.bench.decode",
    "model": "llm_course.bench.model",
    "loss": "llm_course.bench.loss",
    "train": "llm_course.bench.train",
}


STAGE5_COMMANDS = [
    ("sft", "llm_course.training.sft", "supervised fine-tuning on chat data (configs/train/sft-*.yaml)"),
    ("dpo", "llm_course.training.dpo", "direct preference optimization (configs/train/dpo-*.yaml)"),
    ("chat", "llm_course.generation.chat_cli", "an interactive chat with a model folder"),
    ("eval", "llm_course.evaluation.cli", "task accuracy (and preference accuracy) of a model on held-out tasks"),
    ("profile", "llm_course.profiling.cli", "profile training steps of a config: kernels, categories, roofline"),
]


def _bench(args, rest) -> int:
    module = importlib.import_module(BENCHES[args.what])
    return module.main(rest) or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the environment")
    g = sub.add_parser("grade", help="grade exercises")
    g.add_argument("stage", nargs="?", type=int, default=None, help="the stage to grade (default: all)")
    g.add_argument("--impl", default=None, help="exercises (default), solutions, or a folder with that layout")
    g.add_argument("--topic", action="append", default=None, metavar="TOPIC",
                   help="only the exercises of tests/exercises/test_stageN_<k>_TOPIC.py (repeatable), e.g. --topic bpe")
    g.add_argument("--verbose", "-v", action="store_true", help="each failing test: its name, inputs and first lines of its error")
    g.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds one test may run before it is stopped (default 120, or $LLM_COURSE_GRADE_TIMEOUT)")
    g.add_argument("--strict", action="store_true", help="exit non-zero unless everything passes (CI, instructors)")
    p = sub.add_parser("progress", help="points per stage")
    p.add_argument("--impl", default=None)
    p.add_argument("--timeout", type=float, default=None, metavar="S")
    p.add_argument("--strict", action="store_true")
    b = sub.add_parser("bench", add_help=False, help="benchmarks; `llm-course bench kernels --help` lists a benchmark's options")
    b.add_argument("what", choices=sorted(BENCHES))
    t = sub.add_parser("build-tokenizer", help="rebuild configs/tokenizer from the default corpus")
    t.add_argument("--vocab-size", type=int, default=None)
    from llm_course.models import download as download_cmd

    d = sub.add_parser("download", help="fetch pretrained weights (gpt2, qwen2-0.5b) from the Hugging Face Hub")
    download_cmd.add_arguments(d)
    from llm_course.generation import cli as generate_cmd

    gen = sub.add_parser("generate", help="generate text from a model folder, a downloaded model or a config")
    generate_cmd.add_arguments(gen)
    from llm_course.training import pretrain as pretrain_cmd

    pre = sub.add_parser("pretrain", help="pretrain a model from a configs/train config")
    pretrain_cmd.add_arguments(pre)
    stage5 = {}  # name -> (module, help): each module has add_arguments(parser) and run(args)
    for name, module, text in STAGE5_COMMANDS:
        stage5[name] = importlib.import_module(module)
        stage5[name].add_arguments(sub.add_parser(name, help=text))
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "doctor":
        from llm_course.doctor import main as doctor

        return doctor()
    if args.command == "grade":
        return _grade(args)
    if args.command == "progress":
        return _progress(args)
    if args.command == "bench":
        return _bench(args, rest)
    if args.command == "build-tokenizer":
        from llm_course.tokenizer.build_default import main as build

        return build(["--vocab-size", str(args.vocab_size)] if args.vocab_size else [])
    if args.command == "download":
        return download_cmd.run(args)
    if args.command == "generate":
        return generate_cmd.run(args)
    if args.command == "pretrain":
        return pretrain_cmd.run(args)
    if args.command in stage5:
        return stage5[args.command].run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
