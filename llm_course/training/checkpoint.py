"""Checkpoints that let a run stop anywhere and continue as if it never had.

A run's folder ``<out_dir>/checkpoints/`` holds::

    step_00000100/
        model/              config.json + model.safetensors: a Hugging Face folder, so
                            `llm-course generate --model .../model` and transformers read it
        trainer_state.pt    optimizer (AdamW moments), GradScaler, RNG states of every
                            device and every rank, data position of every rank, step, tokens
        train_config.yaml   the TrainConfig of the run
        meta.json           step, tokens seen, last losses: readable without torch
    step_00000200/
    latest                  a text file: the name of the newest complete checkpoint

Everything that changes the future of the run is saved: with the same code and machine
a resumed run gives bit-for-bit the same losses and weights (tests/test_trainer.py).

**Atomic**: a checkpoint is written into a hidden temporary folder beside the others and
renamed into place only once complete (a rename within one file system is atomic); then
``latest`` is replaced the same way (write a temporary file, ``os.replace``). A crash or a
full disk at any moment leaves the previous checkpoint and ``latest`` intact. Only then
are old checkpoints deleted, keeping the newest ``keep_last``.

``trainer_state.pt`` is a pickle (RNG states are Python and NumPy objects): load only
checkpoints you wrote. The weights themselves are safetensors, safe from anywhere.

**Independent of how the run was split.** The model and the optimizer state are always
saved *full* (unsharded), in the layout one process would have: the optimizer's
``state_dict()`` with parameters numbered in the optimizer's order. Under FSDP
(``parallelism: fsdp``) no rank holds the full tensors, so :func:`full_state_dicts` asks
``torch.distributed.checkpoint.state_dict`` (``get_model_state_dict`` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``): every rank
takes part in the all-gathers, rank 0 receives the full tensors on the CPU and writes them.
Loading a sharded model gives every rank the full tensors (read from the file) and lets
``set_model_state_dict`` / ``set_optimizer_state_dict`` keep each rank's slice. So a
checkpoint written by 1, 2 or 8 processes, with DDP or FSDP, resumes under any of them
(the trainer re-shards the data position and re-seeds the RNGs when the count changes).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

LATEST = "latest"
STATE_NAME = "trainer_state.pt"
_STEP_DIR = re.compile(r"step_(\d+)")


def rng_state() -> dict:
    """The state of every random number generator the run uses (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reseeded_rng_state(seed: int, step: int, world_size: int, rank: int) -> dict:
    """A fresh RNG state for ``rank`` of a run resumed at ``step`` with a different number of
    processes than the one that saved (whose per-rank states cannot be split or merged):
    every generator seeded from ``(seed, step, world_size, rank)``. Deterministic (the same
    resume gives the same numbers), different on every rank; the RNGs of this process are
    left as they were."""
    saved = rng_state()
    key = int(np.random.SeedSequence([seed, step, world_size, rank]).generate_state(1)[0])
    random.seed(key)
    np.random.seed(key)
    torch.manual_seed(key)  # CPU and every CUDA device
    fresh = rng_state()
    set_rng_state(saved)
    return fresh


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _is_sharded(model: torch.nn.Module) -> bool:
    from llm_course.training.distributed import is_sharded

    return is_sharded(model)


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every parameter of ``optimizer``, in its order (the ids 0, 1, ... of its state_dict)."""
    if _is_sharded(model):  # after a forward without backward (evaluation) the root is still gathered:
        for m in model.modules():  # put the sharded parameters (those the optimizer holds) back first
            if _is_sharded(m):
                m.reshard()
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight: its first name only
    order = [names.get(id(p)) for g in optimizer.param_groups for p in g["params"]]
    if None in order:
        raise ValueError("checkpoint: the optimizer holds a parameter that is not the model's; build the optimizer "
                         "from the model it trains (after sharding it)")  # fmt: skip
    return order


def optimizer_state_by_id(named: dict, names: list[str]) -> dict:
    """A full optimizer state keyed by parameter names (torch.distributed.checkpoint's layout) ->
    the ordinary ``optimizer.state_dict()`` layout, parameters numbered 0, 1, ... in ``names``' order."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]
    return {"state": {index[n]: v for n, v in named["state"].items()}, "param_groups": groups}


def optimizer_state_by_name(by_id: dict, names: list[str]) -> dict:
    """The inverse of :func:`optimizer_state_by_id`."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in by_id["param_groups"]]
    return {"state": {names[i]: v for i, v in by_id["state"].items()}, "param_groups": groups}


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """``(model state, optimizer state)`` of a model sharded with FSDP2, full and on the CPU, in the
    layout an unsharded model would give. A collective: call it on **every** rank; rank 0 gets the
    tensors, the other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
    )  # fmt: skip

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    names = _param_names(model, optimizer)
    model_state = get_model_state_dict(model, options=options)
    named = get_optimizer_state_dict(model, optimizer, options=options)
    return model_state, (optimizer_state_by_id(named, names) if named else {})


class _FullModel:
    """What save_pretrained reads of a model (``config``, ``state_dict()``) for a state gathered elsewhere."""

    def __init__(self, config, state: dict):
        self.config, self._state = config, state

    def state_dict(self) -> dict:
        return self._state


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first (temporary folders are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, or None when there is none yet."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler=None,
    data_states: list | None = None,
    rng_states: list | None = None,
    train_config: dict | None = None,
    extra: dict | None = None,
    keep_last: int | None = None,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically, point ``latest`` at it, prune old ones.

    ``data_states`` / ``rng_states``: one entry per rank (rank r resumes from entry r);
    None: this process's RNG state and no data position. Call on one rank only.
    ``model_state`` / ``optimizer_state``: the full states when ``model`` is sharded (from
    :func:`full_state_dicts`, gathered by every rank); None: ``model.state_dict()`` and
    ``optimizer.state_dict()``.
    """
    from llm_course.models.hf_weights import save_pretrained

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        inner = _unwrap(model)
        if _is_sharded(inner) and (model_state is None or optimizer_state is None):
            raise ValueError("save_checkpoint: the model is sharded (FSDP); pass model_state and optimizer_state "
                             "from full_state_dicts(), gathered on every rank")  # fmt: skip
        save_pretrained(inner if model_state is None else _FullModel(inner.config, model_state), tmp / "model")
        state = {
            "step": step,
            "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_states if rng_states is not None else [rng_state()],
            "data": data_states,
            "extra": extra or {},
        }
        torch.save(state, tmp / STATE_NAME)
        if train_config is not None:
            (tmp / "train_config.yaml").write_text(yaml.safe_dump(train_config, sort_keys=False), encoding="utf-8")
        meta = {"step": step, **{k: v for k, v in (extra or {}).items() if isinstance(v, (int, float, str))}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # the same step saved again (Ctrl-C right after a save): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / LATEST, name + "\n")
    if keep_last is not None:
        for old in checkpoint_dirs(root)[:-keep_last]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer=None, scaler=None,
                    map_location="cpu") -> dict:  # fmt: skip
    """Fill ``model`` (and ``optimizer``, ``scaler``) from checkpoint ``path`` in place; return the
    trainer state (``step``, ``rng`` and ``data`` lists per rank, ``extra``). RNG states are not
    applied here: the trainer applies them last, right before the first step."""
    from llm_course.models.hf_weights import _Checkpoint, hf_to_course

    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"load_checkpoint: {path} has no {STATE_NAME}; not a training checkpoint")
    inner = _unwrap(model)
    with _Checkpoint(path / "model") as weights:
        hf_state = {name: weights[name] for name in weights}
    state = hf_to_course(inner.config.family, hf_state, inner.config)
    sharded = _is_sharded(inner)
    if sharded:  # every rank holds the full tensors; set_model_state_dict keeps this rank's slice
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )  # fmt: skip

        expected = set(inner.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        missing, unexpected = inner.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and inner.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"load_checkpoint: {path / 'model'} does not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")  # fmt: skip
    trainer_state = torch.load(path / STATE_NAME, map_location=map_location, weights_only=False)
    if optimizer is not None and sharded:
        named = optimizer_state_by_name(trainer_state["optimizer"], _param_names(inner, optimizer))
        set_optimizer_state_dict(inner, optimizer, named, options=StateDictOptions(full_state_dict=True))
    elif optimizer is not None:
        optimizer.load_state_dict(trainer_state["optimizer"])
    if scaler is not None and trainer_state.get("scaler") is not None:
        scaler.load_state_dict(trainer_state["scaler"])
    return trainer_state
