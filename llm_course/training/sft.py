"""``llm-course sft --config NAME_OR_FILE``: supervised fine-tuning on chat records (or resume one).

    llm-course sft --config sft-tiny-cpu                         # configs/train/sft-tiny-cpu.yaml
    llm-course sft --config sft-course-lm --set max_steps=50 --set optimizer.lr=1e-4
    llm-course sft --config sft-tiny-cpu --no-resume             # start afresh
    torchrun --nproc_per_node 8 -m llm_course.training.sft --config sft-course-lm   # DDP

The same trainer as pretraining (``llm_course.training.trainer.train``), with two changes:

* **the weights**: ``init_from`` names a model folder (``models/course-lm``) or a training
  checkpoint (:mod:`llm_course.training.export`); ``init_from: null`` builds
  ``model_config_path`` with random weights (for tests and the CPU demo);
* **the data**: ``data: {type: chat, ...}``, chat records whose loss counts only the
  assistant's tokens (:mod:`llm_course.data.sft`), with the tokenizer and chat template of the
  ``init_from`` folder when it has them, else the course's.

The loss the trainer logs is therefore the mean cross-entropy over the assistant's tokens.
A run resumes from ``<out_dir>/checkpoints/latest`` when there is one. At the end, the main
process writes ``<out_dir>/model/`` (weights of the last checkpoint in the dtype ``init_from``
was saved in, tokenizer, chat template, generation config): give it to ``llm-course generate
--model``, ``llm-course chat --model``, or to the next run's ``init_from``.

Exit status: 0 done, 1 stopped on NaN/inf, 130 interrupted (a checkpoint was saved), 2 a bad
config or bad data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from llm_course.training.pretrain import add_arguments as pretrain_arguments

    pretrain_arguments(p)  # --config, --set, --no-resume, --resume-from: the same as pretraining


def build_start_model(cfg):
    """The model the run starts from: ``cfg.init_from``'s weights (fp32), else ``model_config_path``
    with random weights drawn from ``cfg.seed`` (the same on every rank)."""
    import torch

    from llm_course.models import AutoModelForCausalLM
    from llm_course.training.export import load_init_model

    if cfg.init_from:
        return load_init_model(cfg.init_from)
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_name(cfg.model_config_path)


def build_data(cfg, model, tokenizer_folder, info):
    """The SFT data object of ``cfg.data`` for this rank (:func:`llm_course.data.sft.build_sft_data`)."""
    from llm_course.data.sft import build_sft_data
    from llm_course.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer of {tokenizer_folder} has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size={model.config.vocab_size}: they do not belong together")  # fmt: skip
    block_size = cfg.block_size or model.config.block_size
    return build_sft_data(cfg.data, tokenizer, block_size, rank=info.rank, world_size=info.world_size, seed=cfg.seed,
                          template_folder=tokenizer_folder)  # fmt: skip


def export_final_model(result, cfg, tokenizer_folder) -> Path | None:
    """Write ``<out_dir>/model/`` from the run's last checkpoint (what a resumed run would load, and
    whole even when the model was sharded). Call on the main process; returns the folder."""
    from llm_course.models.hf_weights import load_pretrained
    from llm_course.paths import run_checkpoints_dir
    from llm_course.training import checkpoint as ckpt
    from llm_course.training.export import resolve_model_folder, save_model_folder, saved_dtype

    last = result.last_checkpoint or ckpt.latest_checkpoint(run_checkpoints_dir(result.out_dir))
    if last is None:
        return None
    dtype = saved_dtype(resolve_model_folder(cfg.init_from)) if cfg.init_from else None
    model = load_pretrained(Path(last) / "model")  # in the checkpoint's dtype (the trainer's fp32)
    return save_model_folder(model, result.out_dir / "model", tokenizer_folder=tokenizer_folder, dtype=dtype)


def train_sft(cfg, *, resume="auto", info=None, print_fn=print):
    """Run (or resume) the SFT run ``cfg`` describes and export its model; returns the TrainResult
    (``result.model_dir``: the exported folder, or None when the run did not finish)."""
    from llm_course.training import distributed as D
    from llm_course.training.export import tokenizer_folder_of
    from llm_course.training.trainer import train

    info = info or D.init_distributed(cfg.device)
    tokenizer_folder = tokenizer_folder_of(cfg.init_from)
    model = build_start_model(cfg)
    data = build_data(cfg, model, tokenizer_folder, info)
    if info.is_main and data.stats.examples:
        print_fn(f"SFT data: {data.stats.examples} chat examples read ({data.stats.truncated} truncated, "
                 f"{data.stats.dropped} dropped), {len(data.val_examples)} held out, "
                 f"{'packed' if data.packing else 'padded'} rows of {data.block_size} tokens")  # fmt: skip
    result = train(cfg, model=model, data=data, resume=resume, info=info, print_fn=print_fn)
    result.model_dir = None
    if result.stopped == "done" and info.is_main:
        result.model_dir = export_final_model(result, cfg, tokenizer_folder)
        if result.model_dir is not None:
            print_fn(f"saved the fine-tuned model to {result.model_dir} (llm-course chat --model {result.model_dir})")
    D.barrier(info)
    return result


def run(args) -> int:
    from llm_course.training.pretrain import run_command

    return run_command(args, train_sft)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course sft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
