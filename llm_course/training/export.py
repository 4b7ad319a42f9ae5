"""Model folders in and out of a fine-tuning run: where it starts (``init_from``) and what it leaves.

A fine-tuning run (``llm-course sft``, ``llm-course dpo``) starts from trained weights and ends
with a plain model folder that every other command reads::

    model = load_init_model("models/course-lm")              # config.json + model.safetensors, in fp32
    model = load_init_model("runs/sft/checkpoints/latest")   # ... or a training checkpoint
    save_model_folder(model, "runs/sft/model", tokenizer_folder=tokenizer_folder_of("models/course-lm"))

``<out_dir>/model/`` then holds ``config.json``, ``model.safetensors``, the tokenizer
(``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) and a
``generation_config.json`` whose ``eos_token_id`` lists ``<|im_end|>`` (where a chat reply
ends) and ``<|endoftext|>``: ``llm-course generate --model``, ``llm-course chat --model``,
``init_from`` and ``transformers``' ``from_pretrained`` all read it.

``init_from`` may name (a relative path is looked up from the current folder, then from the
repository root):

* a model folder: ``config.json`` + safetensors (``models/course-lm``, an exported ``<run>/model``);
* a training checkpoint ``.../checkpoints/step_00000100`` (its ``model/`` subfolder);
* a checkpoints folder with a ``latest`` file, or a run folder holding ``checkpoints/latest``.

From the command line, a run's latest checkpoint becomes a model folder to ship::

    python -m llm_course.training.export runs/course-lm --out models/course-lm --dtype bf16 --max-shard-size 4MB
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _candidates(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    out = [p]
    if not p.is_absolute():
        from llm_course import paths

        try:
            out.append(paths.repo_root() / p)
        except FileNotFoundError:
            pass
    return out


def resolve_model_folder(path: str | Path) -> Path:
    """The folder holding ``config.json`` + weights that ``path`` names (see the module docstring)."""
    from llm_course.paths import run_checkpoints_dir
    from llm_course.training import checkpoint as ckpt

    for base in _candidates(path):
        if (base / "config.json").is_file():
            return base
        if (base / ckpt.STATE_NAME).is_file() and (base / "model" / "config.json").is_file():
            return base / "model"  # one training checkpoint
        for root in (base, run_checkpoints_dir(base)):
            if (root / ckpt.LATEST).is_file():
                latest = ckpt.latest_checkpoint(root)
                if latest is not None and (latest / "model" / "config.json").is_file():
                    return latest / "model"
    raise FileNotFoundError(
        f"init_from {str(path)!r}: not a model folder (config.json + model.safetensors), a training checkpoint "
        "(step_*/ with model/ and trainer_state.pt), nor a checkpoints or run folder with a 'latest' file"
    )


def saved_dtype(folder: str | Path) -> torch.dtype | None:
    """The dtype a model folder's config.json records (``dtype`` or ``torch_dtype``), or None."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def load_init_model(path: str | Path, *, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The course's model with the weights ``path`` names, in ``dtype`` (fp32: the trainer keeps fp32
    master weights and runs bf16 under autocast), in train mode, on the CPU."""
    from llm_course.models.hf_weights import load_pretrained

    return load_pretrained(resolve_model_folder(path), dtype=dtype).train()


def tokenizer_folder_of(init_from: str | Path | None) -> Path:
    """The tokenizer of a run: the ``init_from`` folder's own when it has a ``tokenizer.json``, else
    the course's (``configs/tokenizer/``)."""
    from llm_course.generation.chat import course_tokenizer_dir

    if init_from:
        folder = resolve_model_folder(init_from)
        if (folder / "tokenizer.json").is_file():
            return folder
    return course_tokenizer_dir()


def save_model_folder(model: torch.nn.Module, folder: str | Path, *, tokenizer_folder: str | Path | None = None,
                      dtype: torch.dtype | None = None, max_shard_size: int | str | None = None) -> Path:  # fmt: skip
    """Write ``model`` as a plain model folder: weights (``save_pretrained``, in ``dtype``; None: as they
    are; in files of at most ``max_shard_size`` when given), the tokenizer files of
    ``tokenizer_folder`` (default: the course's) and a
    ``generation_config.json`` that stops generation at ``<|im_end|>`` and ``<|endoftext|>``."""
    from llm_course.generation.chat import course_tokenizer_dir
    from llm_course.models.hf_weights import save_pretrained

    tok_dir = Path(tokenizer_folder) if tokenizer_folder is not None else course_tokenizer_dir()
    target = save_pretrained(model, folder, dtype=dtype, max_shard_size=max_shard_size)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, target / name)
    vocab = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
    eos = [ids[t] for t in ("<|im_end|>", "<|endoftext|>") if t in ids]
    gen = {"eos_token_id": eos, "pad_token_id": ids.get("<|endoftext|>", eos[0] if eos else None)}
    (target / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    return target


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    """``python -m llm_course.training.export SOURCE --out FOLDER [--dtype bf16]``."""
    parser = argparse.ArgumentParser(prog="python -m llm_course.training.export",
                                     description="Write a model folder (weights, tokenizer, chat template, generation "
                                                 "config) from a run, a checkpoint or a model folder.")  # fmt: skip
    parser.add_argument("source", help="a run folder, a checkpoints folder, a step_* checkpoint or a model folder")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the weights (default: as saved)")
    parser.add_argument("--max-shard-size", default=None, metavar="SIZE",
                        help="split the weights into files of at most SIZE ('4MB'; default: one file)")  # fmt: skip
    args = parser.parse_args(argv)
    from llm_course.models.hf_weights import load_pretrained

    try:
        folder = resolve_model_folder(args.source)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_pretrained(folder)
    out = save_model_folder(model, args.out, tokenizer_folder=tokenizer_folder_of(args.source),
                            dtype=DTYPES[args.dtype] if args.dtype else None, max_shard_size=args.max_shard_size)  # fmt: skip
    print(f"wrote {out} (from {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
