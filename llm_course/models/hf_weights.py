"""Hugging Face checkpoints: read and write a model folder the way ``transformers`` does.

A Hugging Face model folder holds::

    config.json                        the architecture (read by llm_course.models.config)
    model.safetensors                  every weight, by name          (a small model), or
    model.safetensors.index.json       {"weight_map": {name: shard}}  (a large one)
    model-00001-of-00003.safetensors   ... the shards it names

``load_pretrained(folder)`` builds the course's model from config.json and fills it;
``save_pretrained(model, folder)`` writes a folder that ``transformers``'
``AutoModelForCausalLM.from_pretrained`` reads back. In between sit two pure
functions on state dicts (name -> tensor), the *name maps*:

    hf_to_course(family, state_dict, config)    checkpoint names and layouts -> the course's
    course_to_hf(family, state_dict, config)    and back

**Why a map at all**, when the course's parameters carry Hugging Face's names? Three
differences remain, all of them GPT-2's and the tied head's:

* **Conv1D.** OpenAI's GPT-2 code stored its projections (``attn.c_attn``,
  ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``) as (in, out) matrices used as
  ``x @ W``; ``transformers`` keeps that layout in its ``Conv1D`` module. The course's
  ``Linear`` holds (out, in), as ``torch.nn.Linear``, and computes ``x @ W.T``. So those
  four weights are transposed on the way in and back on the way out. (Their biases,
  the embeddings and the LayerNorms are the same in both.)
* **Two key styles.** ``GPT2LMHeadModel`` names its weights ``transformer.h.0...``;
  the original checkpoints on the Hub (``openai-community/gpt2``) were saved from the
  bare ``GPT2Model`` and have no ``transformer.`` prefix, nor an ``lm_head``. They also
  hold ``attn.bias`` / ``attn.masked_bias``: the causal mask and a -1e4 constant,
  saved by accident as buffers, not weights. They are dropped.
* **Tied heads.** With ``tie_word_embeddings`` the output head *is* the token
  embedding (one Parameter under two names). A checkpoint stores it once, under the
  embedding's name; ``lm_head.weight`` is absent (or, when present, ignored, as
  ``transformers`` does).

Qwen2's names are the same on both sides; old Qwen and Llama checkpoints may also hold
``rotary_emb.inv_freq`` (a buffer computed from the config), which is dropped.

**What loading checks.** Every parameter of the model must be found once, with its
shape; anything else in the checkpoint is an error, too. All the problems are listed in
one ``CheckpointMismatchError`` (missing, unexpected, wrong shape: each key with the
expected and found shapes), before any weight is copied, from the files' headers alone.

**Safety.** Weights are read with ``safetensors`` (a JSON header and raw bytes: reading
one never runs code), one tensor at a time from memory-mapped files, so loading needs
about the model's size in memory, not twice it. A folder with only ``pytorch_model.bin``
(a pickle) is read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only and refuses anything that would run code.

**dtype.** ``load_pretrained(..., dtype=None)`` uses the dtype the checkpoint was saved in
as config.json records it (``"dtype"``, or ``"torch_dtype"`` in configs written before
transformers 5), else float32. Qwen2-0.5B says bfloat16; pass ``dtype=torch.float32``
for exact CPU results (and for Triton's CPU interpreter, which computes zeros in bfloat16).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_course.models.config import config_from_hf

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
SHARD_PATTERN = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)")

# The model class of each family: (module, class), imported when first needed.
MODEL_CLASSES = {
    "gpt2": ("llm_course.models.gpt2", "GPT2LMHeadModel"),
    "qwen2": ("llm_course.models.qwen2", "Qwen2ForCausalLM"),
}


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model its config.json describes (the message lists each key)."""


# --- the name maps ------------------------------------------------------------------------------

# GPT-2's projections stored by HF's Conv1D as (in, out): transposed to Linear's (out, in).
GPT2_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old GPT-2 checkpoints hold but that are not weights: the causal mask and a constant.
GPT2_DROPPED = (".attn.bias", ".attn.masked_bias")
QWEN2_DROPPED = (".rotary_emb.inv_freq",)


def gpt2_from_hf(state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A GPT-2 checkpoint (either key style) in the course's names and layouts.

    For each checkpoint entry: drop the mask buffers; add the ``transformer.`` prefix
    where the checkpoint has none; transpose the four Conv1D weights from (in, out) to
    (out, in). A tied head is left out (it *is* ``transformer.wte.weight``).
    """
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith(GPT2_DROPPED):
            continue  # not weights: the causal mask (1, 1, T, T) and masked_bias
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # saved from GPT2Model: h.0.ln_1.weight -> transformer.h.0.ln_1.weight
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the head shares the token embedding's Parameter
        if name.endswith(GPT2_CONV1D_WEIGHTS):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        out[name] = tensor
    return out


def gpt2_to_hf(state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The course's GPT-2 state dict as ``transformers``' GPT2LMHeadModel saves it (the inverse of :func:`gpt2_from_hf`)."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # saved once, as transformer.wte.weight
        if name.endswith(GPT2_CONV1D_WEIGHTS):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        out[name] = tensor
    return out


def qwen2_from_hf(state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A Qwen2 checkpoint in the course's names: the same names; drop RoPE buffers and a tied head."""
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith(QWEN2_DROPPED):
            continue  # computed from rope_theta, not a weight
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the head shares model.embed_tokens.weight
        out[name] = tensor
    return out


def qwen2_to_hf(state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The course's Qwen2 state dict as ``transformers`` saves it: a tied head is left out."""
    return {name: t for name, t in state_dict.items() if not (name == "lm_head.weight" and config.tie_word_embeddings)}


_FROM_HF = {"gpt2": gpt2_from_hf, "qwen2": qwen2_from_hf}
_TO_HF = {"gpt2": gpt2_to_hf, "qwen2": qwen2_to_hf}


def _family(family: str, table: dict) -> callable:
    if family not in table:
        raise ValueError(f"hf_weights: no name map for the model family {family!r}; known: {', '.join(table)}")
    return table[family]


def hf_to_course(family: str, state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict of ``family`` ("gpt2" | "qwen2") in the course's names and layouts.

    Pure: the input is not changed; tensors are shared with it (a transposed weight is a view).
    A tied head is not in the result: ``model.load_state_dict(..., strict=False)`` leaves
    it to the embedding it shares. The maps treat each entry on its own, so
    :func:`load_pretrained` can run them on one tensor at a time.
    """
    return _family(family, _FROM_HF)(state_dict, config)


def course_to_hf(family: str, state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The course's state dict in the names and layouts ``transformers`` saves (tied head once)."""
    return _family(family, _TO_HF)(state_dict, config)


# --- reading a folder ---------------------------------------------------------------------------


class _Checkpoint(Mapping):
    """The weights of a folder as a read-only mapping name -> tensor, read when asked for.

    ``shapes`` comes from the safetensors headers alone (no tensor is read). A
    ``pytorch_model.bin`` has no header: it is unpickled whole (``weights_only=True``).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, object] = {}  # safetensors file -> safe_open handle
        self._where: dict[str, Path] = {}  # tensor name -> file
        self._bin: dict[str, torch.Tensor] = {}  # tensors of .bin files, already in memory
        files, self.source = self._files(folder)
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{self.source} names the shard {file.name}, which is not in {folder}")
            if file.suffix == ".safetensors":
                handle = self._stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
                self._handles[file] = handle
                names = handle.keys()
            else:
                loaded = torch.load(file, map_location="cpu", weights_only=True)  # tensors only: no code runs
                if not isinstance(loaded, dict) or not all(isinstance(t, torch.Tensor) for t in loaded.values()):
                    raise ValueError(f"{file}: not a state dict (a mapping of names to tensors)")
                self._bin.update(loaded)
                names = loaded.keys()
            for name in names:
                if name in self._where:
                    raise ValueError(f"{folder}: the tensor {name!r} is in both {self._where[name].name} and {file.name}")
                self._where[name] = file

    @staticmethod
    def _files(folder: Path) -> tuple[list[Path], str]:
        """The weight files, in the order transformers looks for them; and what named them."""
        for single, index in ((SAFETENSORS_NAME, SAFETENSORS_INDEX), (BIN_NAME, BIN_INDEX)):
            if (folder / single).is_file():
                return [folder / single], str(folder / single)
            if (folder / index).is_file():
                weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ValueError(f"{folder / index}: no 'weight_map' (tensor name -> shard file)")
                return [folder / f for f in sorted(set(weight_map.values()))], str(folder / index)
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FileNotFoundError(f"{folder}: no weights ({SAFETENSORS_NAME}, {SAFETENSORS_INDEX} or {BIN_NAME}); "
                                f"the folder holds {found}")  # fmt: skip

    def shape(self, name: str) -> tuple[int, ...]:
        file = self._where[name]
        if file in self._handles:
            return tuple(self._handles[file].get_slice(name).get_shape())
        return tuple(self._bin[name].shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        file = self._where[name]
        if file in self._handles:
            return self._handles[file].get_tensor(name)
        return self._bin[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        self._stack.close()
        self._bin.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mismatch_report(expected: dict[str, tuple], found: dict[str, tuple], origin: dict[str, str]) -> list[str]:
    """One line per missing, unexpected and wrongly shaped key (course names; the checkpoint's name when it differs)."""

    def named(name: str) -> str:
        return name if origin.get(name, name) == name else f"{name} (in the checkpoint: {origin[name]})"

    lines = []
    for name in expected:
        if name not in found:
            lines.append(f"  missing     {name}: expected shape {list(expected[name])}")
        elif found[name] != expected[name]:
            lines.append(f"  wrong shape {named(name)}: expected {list(expected[name])}, found {list(found[name])}")
    for name in found:
        if name not in expected:
            lines.append(f"  unexpected  {named(name)}: shape {list(found[name])}")
    return lines


def resolve_dtype(dtype: torch.dtype | str | None, hf_config: dict, who: str = "load_pretrained") -> torch.dtype:
    """The dtype to load in: ``dtype`` (a torch.dtype or its name), else config.json's, else float32."""
    if dtype is None:
        dtype = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        resolved = getattr(torch, name, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"{who}: dtype {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{who}: dtype must be a floating-point torch dtype, got {dtype!r}")
    return dtype


def build_model(config, *, dtype: torch.dtype = torch.float32, device=None) -> torch.nn.Module:
    """The course's model for ``config`` (its class chosen by ``config.family``), on ``device`` in ``dtype``."""
    module, cls_name = MODEL_CLASSES[config.family]
    model_cls = getattr(importlib.import_module(module), cls_name)
    with torch.device(device if device is not None else "cpu"):
        model = model_cls(config)
    return model.to(dtype=dtype)


@torch.no_grad()
def load_pretrained(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None, device=None) -> torch.nn.Module:
    """The course's model, built from ``path``/config.json and filled from its weights.

    ``path``: a Hugging Face model folder (config.json and model.safetensors, or a sharded
    index and its shards, or pytorch_model.bin). ``dtype``: see the module's docstring
    (None: the checkpoint's). ``device``: where the model goes (None: the CPU, as torch and
    transformers do; ``llm_course.device.get_device()`` for the GPU when there is one).
    The model is in eval mode and works on every backend. Nothing in the folder is run:
    config.json is JSON, safetensors is data.
    """
    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file():
        what = "is not a folder" if not folder.is_dir() else f"has no {CONFIG_NAME}"
        raise FileNotFoundError(f"load_pretrained: {folder} {what} (a Hugging Face model folder holds "
                                f"{CONFIG_NAME} and {SAFETENSORS_NAME})")  # fmt: skip
    hf_config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    config = config_from_hf(folder)
    dtype = resolve_dtype(dtype, hf_config)
    model = build_model(config, dtype=dtype, device=device)
    params = model.state_dict(keep_vars=True)  # course name -> Parameter (a tied head appears under both names)
    expected = {n: tuple(p.shape) for n, p in params.items() if not _is_tied_alias(n, config)}

    with _Checkpoint(folder) as checkpoint:
        # 1. names and shapes only, from the files' headers: every problem at once, before copying anything.
        #    The name map runs on an empty 'meta' tensor of each shape (a transpose swaps the shape).
        found, origin, problems = {}, {}, []  # course name -> shape, -> checkpoint name
        for name in checkpoint:
            meta = torch.empty(checkpoint.shape(name), device="meta")  # no data
            for course_name, t in hf_to_course(config.family, {name: meta}, config).items():
                if course_name in found:
                    problems.append(f"  twice       {course_name}: as {origin[course_name]} and as {name}")
                found[course_name], origin[course_name] = tuple(t.shape), name
        problems += _mismatch_report(expected, found, origin)
        if problems:
            raise CheckpointMismatchError(
                f"load_pretrained: the weights in {checkpoint.source} do not fit the {config.family} model of "
                f"{folder / CONFIG_NAME} ({len(problems)} problem{'s' * (len(problems) > 1)}; course names):\n"
                + "\n".join(problems)
            )
        # 2. one tensor at a time: read, map, copy into the model (which casts to its dtype and device)
        for name in checkpoint:
            converted = hf_to_course(config.family, {name: checkpoint[name]}, config)
            for course_name, tensor in converted.items():
                params[course_name].copy_(tensor)
    return model.eval()


def _is_tied_alias(name: str, config) -> bool:
    """The head's second name when it shares the embedding's Parameter."""
    return name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False)


# --- writing a folder ---------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like "50KB", "5GB" (powers of 1000) or "2GiB" (powers of 1024)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"save_pretrained: max_shard_size={size} must be at least 1 byte")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"save_pretrained: max_shard_size={size!r} is not a size (e.g. 5000000, '50KB', '2GiB')")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]  # fmt: skip
    return parse_size(max(1, int(number * scale)))


def shard(state_dict: dict[str, torch.Tensor], max_shard_size: int) -> list[dict[str, torch.Tensor]]:
    """Split into shards of at most ``max_shard_size`` bytes, in order (a larger tensor gets a shard of its own)."""
    shards, current, size = [], {}, 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


def _is_weight_file(name: str) -> bool:
    return name in (SAFETENSORS_NAME, SAFETENSORS_INDEX, BIN_NAME, BIN_INDEX, CONFIG_NAME) or bool(
        SHARD_PATTERN.fullmatch(name)
    )


@torch.no_grad()
def save_pretrained(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    max_shard_size: int | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face folder: config.json and model.safetensors (or shards + index).

    The names and layouts are those ``transformers`` saves (GPT-2's Conv1D weights back
    to (in, out), ``transformer.`` prefix; a tied head once, as the embedding), so
    ``AutoModelForCausalLM.from_pretrained(path)`` reads it. ``max_shard_size`` (bytes, or
    "50KB", "2GB"): above it, the weights go into ``model-0000k-of-0000n.safetensors`` files
    and ``model.safetensors.index.json`` maps each name to its file. ``dtype``: cast the
    floating-point weights (None: as they are in the model).

    Atomic: everything is written into a temporary folder beside ``path``, which then
    takes its place; an error on the way leaves ``path`` as it was and no temporary
    folder behind. Files of an existing ``path`` that are not weights or config.json
    (tokenizer files, a README) are kept; old weight files are replaced.
    """
    config = model.config
    state = model.state_dict()
    if _is_tied_alias("lm_head.weight", config) and "lm_head.weight" in state:
        head, emb = state["lm_head.weight"], _embedding(state, config)
        if head.data_ptr() != emb.data_ptr() and not torch.equal(head, emb):
            raise ValueError("save_pretrained: config.tie_word_embeddings is true, but lm_head.weight is not the "
                             "token embedding (they differ); untie in the config or re-tie the parameters")  # fmt: skip
    hf_state = course_to_hf(config.family, state, config)
    save_dtype = resolve_dtype(dtype, {}, "save_pretrained") if dtype is not None else None
    tensors = {}
    for name, tensor in hf_state.items():
        if save_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(save_dtype)
        tensors[name] = tensor.detach().to("cpu").contiguous()  # safetensors wants dense CPU tensors
    stored = {t.dtype for t in tensors.values() if t.is_floating_point()}
    hf_config = dict(config.to_hf_config())
    if len(stored) == 1:
        hf_config["dtype"] = str(stored.pop()).removeprefix("torch.")

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        metadata = {"format": "pt"}  # transformers checks this key
        shards = [tensors] if max_shard_size is None else shard(tensors, parse_size(max_shard_size))
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SAFETENSORS_NAME), metadata=metadata)
        else:
            weight_map = {}
            for k, part in enumerate(shards, start=1):
                file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                save_file(part, str(tmp / file), metadata=metadata)
                weight_map.update({name: file for name in part})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if target.exists():  # keep what is not ours (tokenizer files, ...)
            if not target.is_dir():
                raise FileExistsError(f"save_pretrained: {target} exists and is not a folder")
            for item in target.iterdir():
                if not _is_weight_file(item.name) and not (tmp / item.name).exists():
                    copy = shutil.copytree if item.is_dir() else shutil.copy2
                    copy(item, tmp / item.name)
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _embedding(state: dict, config) -> torch.Tensor:
    return state["transformer.wte.weight" if config.family == "gpt2" else "model.embed_tokens.weight"]


def _replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``: two renames, so a reader never sees a half-written folder."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # put the old folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
