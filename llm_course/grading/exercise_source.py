"""Exercises and solutions from one source: each stub in ``exercises/`` is made from its solution.

A file in ``solutions/`` is the whole exercise file -- docstrings, launchers,
autograd wrappers, the learner's part filled in. The learner's part is a
marked region::

    def merge(ids, pair, new_id):
        \"\"\"... the docstring the learner reads ...\"\"\"
        # BEGIN EXERCISE bpe_merge
        # stub raises: "merge: replace each (a, b) in ids by new_id ..."
        out = []
        ...
        return out
        # END EXERCISE bpe_merge

The stub in ``exercises/`` is the same file with each region replaced by its
``# stub:`` lines (without the ``# stub:`` prefix) under a line that tells the
learner where to write::

        # Your code here (exercise bpe_merge)
        raise NotImplementedError("merge: replace each (a, b) in ids by new_id ...")

``# stub raises: "message"`` is short for ``# stub: raise NotImplementedError("message")``.

When code follows the region in the same block (a larger scaffold, where the
learner writes a few lines in the middle of a function), the stub also gets
``# End of your code (exercise bpe_merge)`` after it. The name after
``EXERCISE`` is the graded exercise's name, the one ``llm-course grade`` shows.

Rules: the ``BEGIN``/``END`` lines of a region have the same indentation and
name, regions do not nest, each region starts with one or more ``# stub:``
lines (more than one for a scaffold with holes: ``# stub:     x = ...``
keeps the extra indentation), and ``# stub:`` lines appear nowhere else.

Edit the solution, never the stub, then regenerate the stubs::

    python -m llm_course.grading.exercise_source --write     # or: make exercises

``python -m llm_course.grading.exercise_source`` (no option) only checks, and
``tests/test_exercise_sources.py`` fails when a committed stub is not what its
solution gives.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from llm_course.paths import repo_root

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN EXERCISE (?P<name>[A-Za-z0-9_.\-]+)[ \t]*$")
END = re.compile(r"^(?P<indent>[ \t]*)# END EXERCISE (?P<name>[A-Za-z0-9_.\-]+)[ \t]*$")
STUB = re.compile(r"^(?P<indent>[ \t]*)# stub(?P<raises> raises)?:(?: (?P<code>.*))?$")
MARKER_WORDS = re.compile(r"#\s*(BEGIN|END)\s+EXERCISE|#\s*stub(\s+raises)?\s*:", re.IGNORECASE)

REGENERATE = "python -m llm_course.grading.exercise_source --write"


class SourceError(ValueError):
    """A solution file whose exercise markers are malformed (the message names the file and line)."""


@dataclass(frozen=True)
class Region:
    """One learner's part of a solution file: lines ``begin`` to ``end`` (1-based, the markers included)."""

    name: str
    begin: int
    end: int
    indent: str
    stub: tuple[str, ...]  # the stub's lines, without indentation or the '# stub: ' prefix


def regions(text: str, filename: str = "<solution>") -> list[Region]:
    """The marked regions of a solution file, checked (raises :class:`SourceError`)."""
    found: list[Region] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        m = BEGIN.match(line)
        if m is None:
            if END.match(line):
                raise SourceError(f"{filename}:{lineno}: '# END EXERCISE' without a '# BEGIN EXERCISE' before it")
            if STUB.match(line):
                raise SourceError(f"{filename}:{lineno}: a '# stub:' line outside an exercise region (put it right after '# BEGIN EXERCISE')")
            if MARKER_WORDS.search(line):
                raise SourceError(f"{filename}:{lineno}: looks like an exercise marker but is not one: {line.strip()!r} "
                                  "(write '# BEGIN EXERCISE name', '# stub: code', '# END EXERCISE name')")  # fmt: skip
            i += 1
            continue
        indent, name = m["indent"], m["name"]
        stub: list[str] = []
        j = i + 1
        while j < len(lines) and (s := STUB.match(lines[j])) and s["indent"] == indent:
            code = s["code"] or ""
            stub.append(f"raise NotImplementedError({code})" if s["raises"] else code)
            j += 1
        if not stub:
            raise SourceError(f"{filename}:{lineno}: exercise {name} has no '# stub:' line after its BEGIN line "
                              "(the stub's code, e.g. '# stub raises: \"what to write\"')")  # fmt: skip
        while j < len(lines):
            e = END.match(lines[j])
            if e is not None:
                if e["name"] != name or e["indent"] != indent:
                    raise SourceError(f"{filename}:{j + 1}: '# END EXERCISE {e['name']}' does not close "
                                      f"'# BEGIN EXERCISE {name}' of line {lineno} (same name and indentation needed)")  # fmt: skip
                break
            if BEGIN.match(lines[j]):
                raise SourceError(f"{filename}:{j + 1}: exercise regions do not nest (exercise {name} of line {lineno} is still open)")
            if STUB.match(lines[j]):
                raise SourceError(f"{filename}:{j + 1}: '# stub:' lines go right after '# BEGIN EXERCISE {name}', before the solution")
            j += 1
        else:
            raise SourceError(f"{filename}:{lineno}: exercise {name} has no '# END EXERCISE {name}' line")
        found.append(Region(name, lineno, j + 1, indent, tuple(stub)))
        i = j + 1
    return found


def _continues_after(lines: list[str], end: int, indent: str) -> bool:
    """True when the next code line after line ``end`` (1-based) is in the region's block (a scaffold's middle)."""
    for line in lines[end:]:
        if line.strip():
            return line.startswith(indent) and len(line) - len(line.lstrip()) >= len(indent)
    return False


def stub_text(solution: str, filename: str = "<solution>") -> str:
    """The exercise stub that ``solution`` (the text of a solution file) gives."""
    lines = solution.splitlines()
    found = regions(solution, filename)
    if not found:
        raise SourceError(f"{filename}: no '# BEGIN EXERCISE name' region: every file in solutions/ holds at least one exercise")
    out: list[str] = []
    pos = 0  # 0-based index of the next line to copy
    for r in found:
        out.extend(lines[pos : r.begin - 1])
        out.append(f"{r.indent}# Your code here (exercise {r.name})")
        out.extend((r.indent + code) if code else "" for code in r.stub)
        if _continues_after(lines, r.end, r.indent):
            out.append(f"{r.indent}# End of your code (exercise {r.name})")
        pos = r.end
    out.extend(lines[pos:])
    text = "\n".join(out) + ("\n" if solution.endswith("\n") else "")
    try:
        ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise SourceError(f"{filename}: the stub made from it is not valid Python (stub line {exc.lineno}: {exc.msg}); check its '# stub:' lines") from exc
    return text


def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else repo_root()


def expected_stubs(root: Path | None = None) -> dict[Path, str]:
    """``{path relative to exercises/: stub text}`` for every ``solutions/**/*.py``."""
    root = _root(root)
    sol = root / "solutions"
    return {
        p.relative_to(sol): stub_text(p.read_text(), filename=str(p.relative_to(root)))
        for p in sorted(sol.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def differences(root: Path | None = None) -> list[str]:
    """One message per stub in ``exercises/`` that is missing, extra, or not what its solution gives."""
    root = _root(root)
    expected = expected_stubs(root)
    ex = root / "exercises"
    present = {p.relative_to(ex) for p in ex.rglob("*.py") if "__pycache__" not in p.parts}
    problems = [f"exercises/{rel} has no solutions/{rel} to be made from" for rel in sorted(present - set(expected))]
    for rel, text in expected.items():
        path = ex / rel
        if not path.is_file():
            problems.append(f"exercises/{rel} is missing (solutions/{rel} has exercises)")
            continue
        actual = path.read_text()
        if actual != text:
            diff = difflib.unified_diff(text.splitlines(), actual.splitlines(), f"made from solutions/{rel}", f"exercises/{rel}", n=1, lineterm="")
            shown = "\n".join(list(diff)[:20])
            problems.append(f"exercises/{rel} differs from the stub that solutions/{rel} gives:\n{shown}")
    return problems


def write(root: Path | None = None) -> list[Path]:
    """Write every stub that differs from what its solution gives; returns the paths written."""
    root = _root(root)
    written = []
    for rel, text in expected_stubs(root).items():
        path = root / "exercises" / rel
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_course.grading.exercise_source",
        description="Make the exercise stubs (exercises/) from the solutions (solutions/), or check that they agree.",
    )
    parser.add_argument("--write", action="store_true", help="rewrite the stubs that differ (default: only check)")
    parser.add_argument("--root", type=Path, default=None, help="the course repository (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        if args.write:
            for path in write(args.root):
                print(f"wrote {path.relative_to(_root(args.root))}")
            return 0
        problems = differences(args.root)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p, end="\n\n", file=sys.stderr)
    if problems:
        print(f"Edit solutions/, not exercises/, then run: {REGENERATE}", file=sys.stderr)
        return 1
    print("exercises/ agrees with solutions/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
