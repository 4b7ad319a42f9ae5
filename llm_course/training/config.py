"""The training config: one YAML file (``configs/train/*.yaml``) -> one plain dataclass.

    from llm_course.training.config import load_train_config
    cfg = load_train_config("gpt2-tiny-cpu")          # configs/train/gpt2-tiny-cpu.yaml
    cfg = load_train_config("my_run.yaml", overrides={"max_steps": 10})

A file names *what to build* (``model_config_path``: a model config name such as
``gpt2-tiny`` or a .yaml path), *what to read* (the ``data`` block, handed as a dict to
``llm_course.data.pretrain.build_pretrain_data``) and *how to run* (everything else). The
optimizer and the learning-rate schedule are blocks of their own::

    optimizer: {lr: 1.0e-3, betas: [0.9, 0.95], weight_decay: 0.1, eps: 1.0e-8}
    schedule:  {warmup_steps: 50, min_lr: 1.0e-4}

An unknown or misspelled key is an error that names the key, the block and the file: a
typo (``max_step``) must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLELISMS = ("ddp", "fsdp")  # how several processes share the work (one process: no wrapping)


@dataclass
class OptimizerConfig:
    """AdamW. Weight decay applies to matrices only, never to norms, biases or embeddings."""

    lr: float = 6e-4  # the peak learning rate (after warm-up)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Linear warm-up from ~0 to ``optimizer.lr`` over ``warmup_steps``, then a cosine down to
    ``min_lr`` at ``decay_steps`` (default: ``max_steps``), then flat at ``min_lr``."""

    warmup_steps: int = 0
    min_lr: float = 0.0
    decay_steps: int | None = None


@dataclass
class DPOConfig:
    """Direct preference optimization (``llm-course dpo``): ``beta`` scales the implicit reward
    ``beta * (log pi(y|x) - log pi_ref(y|x))``: larger keeps the policy closer to the reference.
    ``reference: frozen``: the reference model is a frozen copy of the starting model, run under
    ``no_grad`` beside the policy. ``sft_weight`` > 0 adds that times the chosen replies' SFT loss
    (negative log-likelihood per token) to the DPO loss, against likelihood displacement (RPO;
    TRL's ``loss_type=["sigmoid", "sft"]``); 0 is plain DPO."""

    beta: float = 0.1
    reference: str = "frozen"
    sft_weight: float = 0.0


DPO_REFERENCES = ("frozen",)


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; see the module docstring and configs/README.md."""

    model_config_path: str  # a configs/model name ("gpt2-tiny") or a .yaml path
    data: dict  # the data block, for build_pretrain_data
    max_steps: int
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    block_size: int | None = None  # tokens per sequence; None: the model's block_size
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = 1.0  # clip the global grad norm to this; null: no clipping
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    log_every: int = 10
    save_every: int = 0  # 0: only at the end (and on Ctrl-C)
    keep_last: int = 2  # checkpoints kept on disk
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a GradScaler)
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in backward (less memory)
    backend: str = "torch"  # llm_course ops backend: torch | triton
    seed: int = 0
    out_dir: str = "pretrain"  # a relative path is under the runs folder (llm_course.paths.runs_dir())
    device: str | None = None  # None: llm_course.device.get_device()
    init_from: str | None = None  # start from these weights: a model folder (config.json + safetensors) or a checkpoint
    dpo: DPOConfig | None = None  # the dpo: block (beta, reference, sft_weight); only DPO runs read it
    parallelism: str = "ddp"  # ddp: a full copy per process | fsdp: parameters, grads, optimizer state sharded (FSDP2)

    # --- reading and checking -------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optimizer"]["betas"] = list(d["optimizer"]["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "the train config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a train config must be a mapping of keys to values, got {type(d).__name__}")
        d = dict(d)
        if d.get("init_from") and "model_config_path" not in d:  # the architecture is the init_from model's
            d["model_config_path"] = d["init_from"]
        _check_keys(cls, d, source, "")
        opt = d.pop("optimizer", None) or {}
        sched = d.pop("schedule", None) or {}
        for name, block, klass in (("optimizer", opt, OptimizerConfig), ("schedule", sched, ScheduleConfig)):
            if not isinstance(block, dict):
                raise ValueError(f"{source}: '{name}' must be a mapping, got {type(block).__name__}")
            _check_keys(klass, block, source, f"{name}.")
        opt = dict(opt)
        if "betas" in opt:
            opt["betas"] = tuple(opt["betas"])
        if d.get("dpo") is not None:
            if not isinstance(d["dpo"], dict):
                raise ValueError(f"{source}: 'dpo' must be a mapping, got {type(d['dpo']).__name__}")
            _check_keys(DPOConfig, d["dpo"], source, "dpo.")
            d["dpo"] = DPOConfig(**d["dpo"])
        cfg = cls(**d, optimizer=OptimizerConfig(**opt), schedule=ScheduleConfig(**sched))
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "the train config") -> None:
        def bad(key, why):
            raise ValueError(f"{source}: {key}={why}")

        for key in ("max_steps", "batch_size", "grad_accum_steps", "eval_batches", "log_every", "keep_last"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                bad(key, f"{v!r} must be a positive integer")
        for key in ("eval_every", "save_every", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                bad(key, f"{v!r} must be an integer >= 0")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1):
            bad("block_size", f"{self.block_size!r} must be a positive integer or null")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            bad("init_from", f"{self.init_from!r} must be a model or checkpoint folder (a non-empty string) or null")
        if self.precision not in PRECISIONS:
            bad("precision", f"{self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if self.parallelism not in PARALLELISMS:
            bad("parallelism", f"{self.parallelism!r} must be one of {', '.join(PARALLELISMS)}")
        if self.dpo is not None:
            b = self.dpo.beta
            if isinstance(b, bool) or not isinstance(b, numbers.Real) or not math.isfinite(b) or b <= 0:
                bad("dpo.beta", f"{b!r} must be a finite number > 0")
            if self.dpo.reference not in DPO_REFERENCES:
                bad("dpo.reference", f"{self.dpo.reference!r} must be one of {', '.join(DPO_REFERENCES)}")
            w = self.dpo.sft_weight
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
                bad("dpo.sft_weight", f"{w!r} must be a finite number >= 0")
        if not isinstance(self.data, dict) or "type" not in self.data:
            bad("data", f"{self.data!r} must be a mapping with a 'type' (local | streaming)")
        o, s = self.optimizer, self.schedule
        for key, v in (("optimizer.lr", o.lr), ("optimizer.weight_decay", o.weight_decay), ("optimizer.eps", o.eps),
                       ("schedule.min_lr", s.min_lr)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                bad(key, f"{v!r} must be a finite number >= 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            bad("optimizer.betas", f"{list(o.betas)!r} must be two numbers in [0, 1)")
        if s.min_lr > o.lr:
            bad("schedule.min_lr", f"{s.min_lr!r} must not exceed optimizer.lr={o.lr!r}")
        if not isinstance(s.warmup_steps, int) or s.warmup_steps < 0:
            bad("schedule.warmup_steps", f"{s.warmup_steps!r} must be an integer >= 0")
        if s.decay_steps is not None and (not isinstance(s.decay_steps, int) or s.decay_steps <= s.warmup_steps):
            bad("schedule.decay_steps", f"{s.decay_steps!r} must be an integer > warmup_steps or null")
        if self.grad_clip is not None and (not isinstance(self.grad_clip, numbers.Real) or self.grad_clip <= 0):
            bad("grad_clip", f"{self.grad_clip!r} must be a number > 0 or null")


def _check_keys(klass, d: dict, source: str, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = [k for k in d if k not in fields]
    if unknown:
        raise ValueError(f"{source}: unknown key '{prefix}{unknown[0]}'; the keys are: "
                         f"{', '.join(prefix + k for k in fields)}")  # fmt: skip
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in d]  # fmt: skip
    if missing:
        raise ValueError(f"{source}: missing key '{prefix}{missing[0]}' (required: "
                         f"{', '.join(prefix + m for m in missing)})")  # fmt: skip


def train_configs_dir() -> Path:
    from llm_course import paths

    return paths.configs_dir() / "train"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """``gpt2-tiny-cpu`` -> configs/train/gpt2-tiny-cpu.yaml; a path is taken as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"train config {str(p)!r} does not exist")
        return p
    named = train_configs_dir() / f"{name_or_path}.yaml"
    if not named.is_file():
        known = sorted(f.stem for f in train_configs_dir().glob("*.yaml"))
        raise FileNotFoundError(f"no train config named {str(name_or_path)!r}; known: {', '.join(known) or 'none'}")
    return named


def load_train_config(name_or_path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a train config file; ``overrides`` (flat keys, ``"optimizer.lr"`` for a block) win over it."""
    path = resolve_config_path(name_or_path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if d is None:
        raise ValueError(f"{path}: the file is empty")
    if isinstance(d, dict):
        for key, value in (overrides or {}).items():
            if "." in key:
                block, sub = key.split(".", 1)
                d.setdefault(block, {})
                d[block] = {**(d[block] or {}), sub: value}
            else:
                d[key] = value
    return TrainConfig.from_dict(d, source=str(path))
