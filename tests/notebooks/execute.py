"""Re-execute the notebooks with the untouched exercise stubs and store their outputs.

    make notebooks                                  # every notebook
    make notebooks NOTEBOOKS=notebooks/01a_first_triton_kernels.ipynb

The outputs a learner finds in a fresh clone must be the ones the course gives
*before* any exercise is written ("not done yet; using the reference", zero points),
made in the pinned environment (requirements.txt). So this script refuses to run
when ``exercises/`` differs from the committed stubs or when an installed version
differs from requirements.txt, runs every notebook in this
environment's Python with ``LLM_COURSE_IMPL=exercises`` (seeded, progress bars off),
and refuses to store an output that names a path of this machine.
``make test-notebooks`` then checks that the stubs reproduce these outputs and that
the solutions give the same ones up to the exercise tags and the grader's table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"

# Seeds and quiet progress bars: the same outputs on every run, as far as the notebooks allow.
ENV = {"LLM_COURSE_IMPL": "exercises", "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0", "LLM_COURSE_SEED": "0"}


def machine_paths() -> list[str]:
    """Path prefixes that would only mean something on this machine."""
    found = {str(ROOT), str(Path.home()), tempfile.gettempdir(), "/tmp/", "/work/", "/root/", "/home/"}
    return sorted(p for p in found if p not in ("", "/"))


def output_text(output: dict) -> str:
    """The text of one cell output: streams, text data, error tracebacks (images are not text)."""
    parts = [output.get("text", "")]
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            parts.append(value if isinstance(value, str) else str(value))
    parts += output.get("traceback", [])
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def find_machine_paths(nb: dict) -> list[str]:
    """``"cell N: <line>"`` for each output line that names a path of this machine."""
    pattern = re.compile("|".join(re.escape(p) for p in machine_paths()))
    hits = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            for line in output_text(out).splitlines():
                if pattern.search(line):
                    hits.append(f"cell {i}: {line.strip()[:160]}")
    return hits


def pinned_versions(python: str) -> dict[str, str]:
    """requirements.txt as {package (lower case): version}, for a Python version such as "3.11"."""
    from packaging.markers import Marker

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec, _, marker = line.split("#")[0].partition(";")
        if "==" not in spec or (marker.strip() and not Marker(marker.strip()).evaluate({"python_version": python})):
            continue
        name, version = (s.strip() for s in spec.split("=="))
        pins[name.lower()] = version
    return pins


def check_pinned_environment() -> None:
    """Refuse to store outputs made with versions other than requirements.txt's."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name, pin in pinned_versions(f"{sys.version_info.major}.{sys.version_info.minor}").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a constraint for a package this environment does not need
        if installed.split("+")[0] != pin:
            wrong.append(f"{name} {installed} (requirements.txt: {pin})")
    if wrong:
        sys.exit("this environment is not the pinned one (make setup installs it):\n  " + "\n  ".join(wrong))


def check_stubs_untouched() -> None:
    status = subprocess.run(["git", "status", "--porcelain", "--", "exercises"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    if status.strip():
        sys.exit("exercises/ differs from the committed stubs; the stored outputs must be those of the "
                 f"untouched stubs. Changed:\n{status}")  # fmt: skip


def merge_streams(outputs: list) -> list:
    """Join consecutive pieces of one stream (stdout or stderr) into one output, as a learner's
    Jupyter shows them: how a cell's printing was cut into messages depends on the machine's load."""
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if out.get("output_type") == "stream" and prev is not None and prev.get("output_type") == "stream" \
                and prev.get("name") == out.get("name"):
            prev["text"] = "".join(prev["text"]) + "".join(out["text"])
        else:
            merged.append(out)
    return merged


def execute(path: Path, timeout: int) -> None:
    import nbformat
    from ipykernel.kernelspec import get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    class ThisPython(KernelSpecManager):
        """The kernel runs this environment's Python, whatever kernels the machine has installed."""

        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir="", **get_kernel_dict())

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    for cell in nb.cells:
        if cell.cell_type == "code":  # a markdown cell has no outputs (nbformat refuses the field)
            cell["outputs"] = merge_streams(cell.get("outputs", []))
    nbformat.validate(nb)  # what Jupyter checks when it opens the notebook
    hits = find_machine_paths(nb)
    if hits:
        sys.exit(f"{path.name}: outputs name paths of this machine; not stored:\n  " + "\n  ".join(hits))
    nb.metadata.get("kernelspec", {}).update(name="python3", display_name="Python 3 (llm_course)", language="python")
    nbformat.write(nb, path)
    print(f"{path.relative_to(ROOT)}: executed and stored in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook in notebooks/")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
    check_stubs_untouched()
    check_pinned_environment()
    os.environ.update(ENV)
    os.environ.pop("LLM_COURSE_BACKEND", None)
    for path in paths:
        execute(path, args.timeout)


if __name__ == "__main__":
    main()
