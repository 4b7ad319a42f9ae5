"""The course's folders (llm_course/paths.py): found from the package, moved by environment variables.

Every module asks ``llm_course.paths`` for a folder; nothing else works out where
the repository is (this file checks that too, by reading the sources).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llm_course
from llm_course import paths

PACKAGE = Path(llm_course.__file__).resolve().parent

ENVS = (paths.ENV_ROOT, paths.ENV_CONFIGS, paths.ENV_DATA, paths.ENV_RUNS, paths.ENV_CHECKPOINTS, paths.ENV_BENCH)


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    for env in ENVS:
        monkeypatch.delenv(env, raising=False)


def test_the_repository_is_the_clone_that_holds_the_package():
    root = paths.repo_root()
    assert root == PACKAGE.parent
    assert (root / "pyproject.toml").is_file()
    assert paths.configs_dir() == root / "configs" and paths.configs_dir().is_dir()
    assert paths.data_dir() == root / "data" and (paths.data_dir() / "sample_pretrain.jsonl").is_file()
    assert paths.runs_dir() == root / "runs"
    assert paths.checkpoints_dir() == root / "checkpoints"
    assert paths.bench_dir() == root / "bench_out"


def test_environment_variables_move_each_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_ROOT, str(tmp_path))
    assert paths.repo_root() == tmp_path.resolve()
    assert paths.configs_dir() == tmp_path.resolve() / "configs"  # the folders follow the root
    for env, fn in [
        (paths.ENV_CONFIGS, paths.configs_dir),
        (paths.ENV_DATA, paths.data_dir),
        (paths.ENV_RUNS, paths.runs_dir),
        (paths.ENV_CHECKPOINTS, paths.checkpoints_dir),
        (paths.ENV_BENCH, paths.bench_dir),
    ]:
        monkeypatch.setenv(env, str(tmp_path / env))
        assert fn() == tmp_path / env, env


def test_an_argument_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_RUNS, str(tmp_path / "env"))
    assert paths.runs_dir(tmp_path / "arg") == tmp_path / "arg"
    assert paths.checkpoints_dir(tmp_path / "ckpt") == tmp_path / "ckpt"
    assert paths.bench_dir(str(tmp_path / "b")) == tmp_path / "b"


def test_a_wrong_root_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_ROOT, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LLM_COURSE_ROOT"):
        paths.repo_root()
    with pytest.raises(FileNotFoundError, match="LLM_COURSE_ROOT"):
        paths.runs_dir()  # not silently somewhere else


def test_the_users_of_paths_agree():
    from llm_course.bench.common import output_dir
    from llm_course.data import corpus
    from llm_course.grading import adapter
    from llm_course.tokenizer.hf import DEFAULT_DIR

    assert corpus.sample_path() == paths.data_dir() / "sample_pretrain.jsonl"
    assert DEFAULT_DIR == paths.configs_dir() / "tokenizer"
    assert adapter.resolve_impl("solutions") == paths.repo_root() / "solutions"

    class Args:
        out = None

    assert output_dir(Args(), __import__("torch").device("cpu")).parent == paths.bench_dir()


def test_no_module_finds_the_repository_by_itself():
    """Climbing from a file up to the repository (``Path(__file__).parents[2]``) belongs in paths.py alone."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "paths.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            climbs = isinstance(node, ast.Attribute) and (
                node.attr == "parents"
                or (node.attr == "parent" and isinstance(node.value, ast.Attribute) and node.value.attr == "parent")
            )
            if climbs:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} climbs folders (.parents, .parent.parent)")
            if isinstance(node, ast.Constant) and node.value in ("bench_out", "runs", "checkpoints"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} names the folder {node.value!r}")
    assert not offenders, "ask llm_course.paths instead:\n" + "\n".join(offenders)
