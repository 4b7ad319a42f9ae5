"""Pretrained weights from the Hugging Face Hub, on request: ``llm-course download gpt2|qwen2-0.5b``.

The course never downloads by itself (tests, notebooks and CI build small random
models). When you want the real thing, one command fetches a model folder::

    llm-course download gpt2                  # openai-community/gpt2, 124M parameters, ~550 MB
    llm-course download qwen2-0.5b            # Qwen/Qwen2-0.5B, ~1 GB in bfloat16
    llm-course download gpt2 --dir ~/models   # elsewhere than weights/ (or $LLM_COURSE_WEIGHTS_DIR)

Only what the course reads is fetched: config.json, the safetensors weights (and the
index of a sharded checkpoint), the generation config and the tokenizer files; not the
repository's other formats (PyTorch pickles, TensorFlow, Flax, ONNX). Then::

    from llm_course.models.download import local_weights
    from llm_course.models.hf_weights import load_pretrained

    folder = local_weights("gpt2")            # the folder, or None when not downloaded
    if folder is not None:
        model = load_pretrained(folder)

Without a network the command says so in one sentence and exits with status 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_course import paths

# course name -> Hugging Face repository
MODELS = {
    "gpt2": "openai-community/gpt2",
    "qwen2-0.5b": "Qwen/Qwen2-0.5B",
}

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]
IGNORE_PATTERNS = ["*/*"]  # files in sub-folders (onnx/, ...): "*" in a pattern also matches "/"


class DownloadError(RuntimeError):
    """A download that could not happen; the message is one sentence that says why."""


def _check_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def weights_folder(name: str, root: str | Path | None = None) -> Path:
    """Where model ``name`` goes: ``<root or paths.weights_dir()>/<name>`` (it may not exist yet)."""
    _check_name(name)
    return paths.weights_dir(root) / name


def is_model_folder(folder: Path) -> bool:
    """True when ``folder`` holds a config.json and weights (single file or a sharded index)."""
    return (folder / "config.json").is_file() and (
        (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    )


def local_weights(name: str, root: str | Path | None = None) -> Path | None:
    """The downloaded folder of model ``name`` ("gpt2", "qwen2-0.5b"), or None when it is not there."""
    folder = weights_folder(name, root)
    return folder if is_model_folder(folder) else None


def _is_network_error(error: BaseException) -> bool:
    """Errors that mean 'the Hub could not be reached' (or refused), not a bug in this code."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(error, (LocalEntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    module = type(error).__module__.split(".")[0]
    return module in ("httpx", "httpx2", "httpcore", "requests", "urllib3")  # the HTTP clients the hub uses


def _why(error: BaseException) -> str:
    """Half a sentence: why the Hub gave nothing."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    causes = [error, error.__cause__, error.__context__]
    if constants.HF_HUB_OFFLINE or any(isinstance(e, OfflineModeIsEnabled) for e in causes):
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(error, RepositoryNotFoundError):
        return "the Hub does not know this repository, or it needs a login"
    response = getattr(error, "response", None)
    if isinstance(error, HfHubHTTPError) and getattr(response, "status_code", None):
        return f"the Hub answered HTTP {response.status_code}"
    return "the Hub could not be reached (is there a network connection?)"


def download(name: str, root: str | Path | None = None) -> Path:
    """Fetch model ``name`` into :func:`weights_folder` and return that folder.

    Files already there are not fetched again. Raises :class:`DownloadError` (one
    sentence) when the Hub cannot be reached (no network, ``HF_HUB_OFFLINE=1``, a proxy
    that blocks it) or refuses the repository.
    """
    from huggingface_hub import snapshot_download

    repo = _check_name(name)
    folder = weights_folder(name, root)
    try:
        snapshot_download(repo_id=repo, local_dir=folder, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
    except Exception as error:  # noqa: BLE001 - only network errors are turned into a sentence
        if not _is_network_error(error):
            raise
        raise DownloadError(f"could not download {name} ({repo}) from the Hugging Face Hub: {_why(error)}") from None
    if not is_model_folder(folder):
        raise DownloadError(f"the download of {name} ({repo}) into {folder} has no config.json and safetensors weights")
    return folder


def main(argv: list[str] | None = None) -> int:
    """``llm-course download NAME [--dir DIR]``: exit status 0 with the folder printed, 1 when it failed."""
    parser = argparse.ArgumentParser(prog="llm-course download", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(MODELS), help="the model to fetch")
    parser.add_argument("--dir", default=None, metavar="DIR",
                        help="the folder that receives <name>/ (default: weights/, or $LLM_COURSE_WEIGHTS_DIR)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        folder = download(args.name, args.dir)
    except DownloadError as error:
        print(f"llm-course download: {error}.")
        return 1
    print(f"{args.name}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
