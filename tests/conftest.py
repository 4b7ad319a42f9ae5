"""Shared test set-up.

* ``--impl exercises|solutions|PATH`` (or $LLM_COURSE_IMPL) picks the
  implementation directory the graded tests in ``tests/exercises/`` run against.
  Without it, a plain ``pytest tests`` skips those graded tests: they are run
  through the grader (see ``tests/test_grading_honesty.py``).
* Tests marked ``gpu`` are skipped without a CUDA GPU.
* ``rng`` hands each test a freshly seeded generator: new random inputs every
  run (the seed is printed on failure, so a failure can be replayed with
  LLM_COURSE_SEED=<seed>).
"""

from __future__ import annotations

import os
import random

import pytest

from llm_course.device import configure_triton, has_gpu

configure_triton()  # before any test module imports a kernel module

# Under pytest-xdist (`-n N`), N workers share the cores: give each its share of torch's
# threads, or they fight over the cores and tiny ops get hundreds of times slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        default=None,
        help="implementation the graded tests run against: exercises, solutions, or a path "
        "(default: $LLM_COURSE_IMPL; without either, tests/exercises is skipped)",
    )


def _impl_choice(config):
    return config.getoption("--impl") or os.environ.get("LLM_COURSE_IMPL")


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "exercises" and collection_path.parent.name == "tests" and not _impl_choice(config):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Impl:
    """What graded tests see: ``impl.load("stage0_tokens/bpe")`` returns the chosen module."""

    def __init__(self, name: str):
        self.name = name

    def load(self, topic: str):
        from llm_course.grading.adapter import load

        return load(topic, self.name)


@pytest.fixture(scope="session")
def impl(request) -> Impl:
    return Impl(_impl_choice(request.config) or "exercises")


@pytest.fixture
def rng():
    """A torch.Generator with a fresh seed (also seeds torch's global generator)."""
    import torch

    seed = int(os.environ.get("LLM_COURSE_SEED", random.SystemRandom().randrange(2**31)))
    print(f"random seed: {seed} (replay with LLM_COURSE_SEED={seed})")  # shown when the test fails
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
