"""Where things are: the one place that knows the course's folders.

    from llm_course import paths

    paths.repo_root()           # the clone: the folder that holds llm_course/ and configs/
    paths.configs_dir()         # configs/  (tokenizer, model and training configs)
    paths.data_dir()            # data/     (the small sample corpus, later data sets)
    paths.runs_dir()            # runs/         where training runs write logs   (default)
    paths.checkpoints_dir()     # checkpoints/  where weights are saved          (default)
    paths.bench_dir()           # bench_out/    where benchmarks write CSV and charts (default)
    paths.weights_dir()         # weights/      downloaded Hugging Face models (default)

Each one can be moved with an environment variable, and the output folders
also by an argument (a script's ``--out``, say), which wins over both:

    LLM_COURSE_ROOT             the repository (when the package is installed elsewhere)
    LLM_COURSE_CONFIGS_DIR      configs/
    LLM_COURSE_DATA_DIR         data/
    LLM_COURSE_RUNS_DIR         runs/
    LLM_COURSE_CHECKPOINTS_DIR  checkpoints/
    LLM_COURSE_BENCH_DIR        bench_out/
    LLM_COURSE_WEIGHTS_DIR      weights/

The repository is found from this file: the first folder above it that holds
``pyproject.toml`` and ``configs/`` (a clone, installed with ``pip install -e .``).
Outside a clone the output folders default to the current folder. They are
not created here; whoever writes to one creates it.

This module sits at the bottom of the package: it imports nothing from
``llm_course``, so any module may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_ROOT = "LLM_COURSE_ROOT"
ENV_CONFIGS = "LLM_COURSE_CONFIGS_DIR"
ENV_DATA = "LLM_COURSE_DATA_DIR"
ENV_RUNS = "LLM_COURSE_RUNS_DIR"
ENV_CHECKPOINTS = "LLM_COURSE_CHECKPOINTS_DIR"
ENV_BENCH = "LLM_COURSE_BENCH_DIR"
ENV_WEIGHTS = "LLM_COURSE_WEIGHTS_DIR"

PathLike = str | os.PathLike


def _is_repo(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "configs").is_dir()


def repo_root() -> Path:
    """The course repository: $LLM_COURSE_ROOT, else the clone this package was imported from."""
    env = os.environ.get(ENV_ROOT)
    if env:
        root = Path(env).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"${ENV_ROOT} is {env!r}, which is not a folder")
        return root
    here = Path(__file__).resolve()
    for parent in here.parents:
        if _is_repo(parent):
            return parent
    raise FileNotFoundError(
        "cannot find the course repository (a folder with pyproject.toml and configs/) above the "
        f"installed package; install it with `pip install -e .` from a clone, or set ${ENV_ROOT}"
    )


def _folder(env: str, default: str, override: PathLike | None = None) -> Path:
    """``override``, else $env, else ``<repository>/<default>``."""
    chosen = override or os.environ.get(env)
    if chosen:
        return Path(chosen).expanduser()
    return repo_root() / default


def _output(env: str, default: str, override: PathLike | None = None) -> Path:
    """Like :func:`_folder`, but outside a clone the default is ``./<default>`` (output folders only)."""
    try:
        return _folder(env, default, override)
    except FileNotFoundError:
        if os.environ.get(ENV_ROOT):
            raise  # a wrong $LLM_COURSE_ROOT is an error, not a reason to write elsewhere
        return Path.cwd() / default


def configs_dir() -> Path:
    """``configs/``: tokenizer files, model and training configs ($LLM_COURSE_CONFIGS_DIR)."""
    return _folder(ENV_CONFIGS, "configs")


def data_dir() -> Path:
    """``data/``: the sample corpus and the data sets ($LLM_COURSE_DATA_DIR)."""
    return _folder(ENV_DATA, "data")


def runs_dir(override: PathLike | None = None) -> Path:
    """Where a training run writes its logs: ``override``, $LLM_COURSE_RUNS_DIR, else ``runs/``."""
    return _output(ENV_RUNS, "runs", override)


def checkpoints_dir(override: PathLike | None = None) -> Path:
    """Where weights are saved: ``override``, $LLM_COURSE_CHECKPOINTS_DIR, else ``checkpoints/``."""
    return _output(ENV_CHECKPOINTS, "checkpoints", override)


def run_checkpoints_dir(run_dir: PathLike) -> Path:
    """Where one training run keeps its checkpoints: ``<run_dir>/checkpoints/``."""
    return Path(run_dir) / "checkpoints"


def bench_dir(override: PathLike | None = None) -> Path:
    """Where benchmarks write CSV, metadata and charts: ``override``, $LLM_COURSE_BENCH_DIR, else ``bench_out/``."""
    return _output(ENV_BENCH, "bench_out", override)


def weights_dir(override: PathLike | None = None) -> Path:
    """Where ``llm-course download`` puts Hugging Face models: ``override``, $LLM_COURSE_WEIGHTS_DIR, else ``weights/``."""
    return _output(ENV_WEIGHTS, "weights", override)
