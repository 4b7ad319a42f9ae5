"""``llm-course pretrain --config NAME_OR_FILE``: run (or resume) a pretraining run.

    llm-course pretrain --config gpt2-tiny-cpu                  # configs/train/gpt2-tiny-cpu.yaml
    llm-course pretrain --config my.yaml --set max_steps=50 --set optimizer.lr=1e-3
    llm-course pretrain --config gpt2-tiny-cpu --no-resume      # start afresh
    torchrun --nproc_per_node 8 -m llm_course.training.pretrain --config gpt2-124m   # DDP

A run resumes from ``<out_dir>/checkpoints/latest`` when there is one. Exit status: 0 done,
1 stopped on NaN/inf, 130 interrupted (a checkpoint was saved), 2 a bad config.
"""

from __future__ import annotations

import argparse
import sys

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a configs/train name (gpt2-tiny-cpu) or a .yaml file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable); optimizer.lr=1e-3 for a block's key")  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints and start from step 0")
    p.add_argument("--resume-from", default=None, metavar="DIR", help="resume from this checkpoint folder")


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)  # numbers, booleans, null, lists as in YAML
    return out


def run_command(args, train_fn) -> int:
    """What ``llm-course pretrain``, ``sft`` and ``dpo`` share: read the config (with ``--set``), start the
    processes' group, run ``train_fn(cfg, resume=..., info=...)`` and turn how it ended into an exit status."""
    from llm_course.data.pretrain import DataError
    from llm_course.training import distributed as D
    from llm_course.training.config import load_train_config

    try:
        cfg = load_train_config(args.config, overrides=_overrides(args.set))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = D.init_distributed(cfg.device)
    try:
        resume = args.resume_from or (False if args.no_resume else "auto")
        result = train_fn(cfg, resume=resume, info=info)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup(info)
    return {"done": 0, "nan": 1, "interrupted": 130}[result.stopped]


def run(args) -> int:
    from llm_course.training.trainer import train

    return run_command(args, train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
