"""Name a Triton kernel's out-of-bounds loads and stores, in the interpreter.

On a GPU, a load past the end of a tensor reads whatever lies there and a store
past the end corrupts it; in Triton's interpreter (``TRITON_INTERPRET=1``) the
same store can kill the whole Python process. Inside :func:`memcheck`, every
load and store of a kernel launched through the interpreter is checked, before
it happens, against the tensors that were passed to that launch, and a stray
one fails with a sentence that names it::

    softmax_kernel (program 8, softmax.py line 65): the load through x_ptr reads
    28 elements past the end of x (x has 900 elements, shape (9, 100)): is the load masked?

It is used by the graded kernel tests::

    with memcheck(hint="mask the loads and the store with cols < n_cols"):
        mod.softmax_forward(x)

How it works. The interpreter runs a kernel's body as Python once per program,
with numpy arrays of raw addresses as pointers; ``tl.load`` and ``tl.store``
end in its builder's ``create_masked_load`` / ``create_masked_store``. Inside
the context those methods are wrapped: the addresses whose mask is on are
compared with the memory of the tensor the pointer was built from. Which
tensor that is, we know because each pointer argument is tagged with its name
when the launch starts, and the tag is carried through pointer arithmetic
(``x_ptr + offsets``), broadcasts, reshapes and ``tl.where``. Only the lanes the
mask lets through count: a masked-off lane may point anywhere.

Without the interpreter (a real GPU), on a Triton whose interpreter is laid
out differently, or with ``LLM_COURSE_MEMCHECK=0``, :func:`memcheck` does
nothing (:func:`memcheck_status` says why); the tests' guard regions
(``llm_course.grading.checks.guarded``) still catch stray stores there.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["OutOfBounds", "memcheck", "memcheck_status"]

_TAG = "llm_course.memcheck"  # key in an interpreter TensorHandle's attr dict: the pointer argument it comes from
_MIXED = object()  # a pointer built from two different arguments (tl.where(c, x_ptr, y_ptr))


class OutOfBounds(AssertionError):
    """A kernel loaded or stored outside the tensors of its launch."""


# --- the memory of one tensor argument ---------------------------------------------------------------


@dataclass
class _Region:
    """Where the elements of one tensor argument live: addresses ``base + itemsize * o`` for o in its offsets."""

    arg: str  # the kernel's parameter name, e.g. "x_ptr"
    tensor: torch.Tensor
    base: int = 0
    itemsize: int = 1
    lo: int = 0  # smallest element offset from base (negative only with negative strides)
    hi: int = -1  # largest element offset (inclusive); hi < lo for an empty tensor
    dense: bool = True  # every offset in [lo, hi] is an element
    _table: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        t = self.tensor
        self.base, self.itemsize = t.data_ptr(), t.element_size()
        if t.numel() == 0:
            return
        self.lo = sum(min(0, (n - 1) * s) for n, s in zip(t.shape, t.stride()))
        self.hi = sum(max(0, (n - 1) * s) for n, s in zip(t.shape, t.stride()))
        self.dense = self.hi - self.lo + 1 == t.numel()  # no gaps (and no overlaps)

    @property
    def name(self) -> str:
        """The tensor's name for a learner: the parameter without its ``_ptr`` suffix."""
        return self.arg.removesuffix("_ptr") or self.arg

    def describe(self) -> str:
        t = self.tensor
        shape = f"shape {tuple(t.shape)}"
        if not self.dense:
            shape += f", strides {tuple(t.stride())}"
        n = t.numel()
        return f"{self.name} has {n} element{'s' * (n != 1)}, {shape}"

    def table(self) -> np.ndarray:
        """For a strided view: a boolean per offset in [lo, hi], True where an element is."""
        if self._table is None:
            t = self.tensor
            offsets = np.zeros((), dtype=np.int64)
            for n, s in zip(t.shape, t.stride()):
                offsets = np.add.outer(offsets, np.arange(n, dtype=np.int64) * s)
            table = np.zeros(self.hi - self.lo + 1, dtype=bool)
            table[offsets.ravel() - self.lo] = True
            self._table = table
        return self._table

    def bad(self, addresses: np.ndarray, nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        """(element offsets, is-outside) of ``addresses`` (uint64, each accessing ``nbytes``)."""
        delta = addresses.astype(np.int64) - np.int64(self.base)  # bytes from the first element
        offsets = delta // self.itemsize
        if self.hi < self.lo:
            return offsets, np.ones(offsets.shape, dtype=bool)
        inside = (delta >= self.lo * self.itemsize) & (delta + nbytes <= (self.hi + 1) * self.itemsize)
        if nbytes == self.itemsize:
            inside &= delta % self.itemsize == 0
        if not self.dense and inside.any():
            idx = np.where(inside, offsets - self.lo, 0)
            inside &= self.table()[idx]
        return offsets, ~inside

    def contains(self, addresses: np.ndarray, nbytes: int) -> np.ndarray:
        return ~self.bad(addresses, nbytes)[1]

    def distance(self, address: int) -> int:
        """Bytes from ``address`` to this tensor's memory (0 inside its span)."""
        first = self.base + self.lo * self.itemsize
        end = self.base + (self.hi + 1) * self.itemsize
        return max(first - address, address - end + 1, 0)


@dataclass
class _Launch:
    kernel: str
    code_file: str
    regions: dict[str, _Region]  # parameter name -> region
    by_id: dict[int, str]  # id() of each host argument -> parameter name


# --- the checker -----------------------------------------------------------------------------------


class _Checker:
    """Installs the wrappers into the interpreter while at least one :func:`memcheck` is active."""

    def __init__(self):
        self.depth = 0
        self.hints: list[str | None] = []
        self.launch: _Launch | None = None
        self.restore: list[tuple[object, str, object, bool]] = []
        self.reason = ""
        self.interp = None

    # which Triton pieces we need, and whether they are there
    def _find(self):
        if os.environ.get("LLM_COURSE_MEMCHECK", "1") == "0":
            self.reason = "turned off by LLM_COURSE_MEMCHECK=0"
            return None
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            self.reason = "Triton kernels are compiled for a GPU here, not interpreted"
            return None
        if self.interp is not None:
            return self.interp
        try:
            from triton.runtime import interpreter as interp
        except Exception as exc:  # noqa: BLE001 - any import problem means: no checks
            self.reason = f"triton.runtime.interpreter cannot be imported ({exc})"
            return None
        needed = ("interpreter_builder", "GridExecutor", "TensorHandle", "_implicit_cvt")
        builder_methods = ("create_masked_load", "create_masked_store", "create_addptr")
        missing = [n for n in needed if not hasattr(interp, n)]
        if not missing:
            missing = [m for m in builder_methods if not hasattr(interp.interpreter_builder, m)]
            missing += [m for m in ("_init_args_hst", "__call__") if not hasattr(interp.GridExecutor, m)]
        if not missing and "attr" not in getattr(interp.TensorHandle, "__dataclass_fields__", {}):
            missing = ["TensorHandle.attr"]
        if missing:
            self.reason = f"this Triton's interpreter has no {', '.join(missing)}"
            return None
        self.interp = interp
        return interp

    def _set(self, obj, name, value):
        had = name in vars(obj)
        self.restore.append((obj, name, vars(obj).get(name), had))
        setattr(obj, name, value)

    def install(self) -> bool:
        interp = self._find()
        if interp is None:
            return False
        b = interp.interpreter_builder
        self._set(b, "create_masked_load", self._wrap_access(b.create_masked_load, "load", ptr=0, mask=1))
        self._set(b, "create_masked_store", self._wrap_access(b.create_masked_store, "store", ptr=0, mask=2))
        if hasattr(b, "create_atomic_rmw"):  # (op, ptr, val, mask, sem, scope)
            self._set(b, "create_atomic_rmw", self._wrap_access(b.create_atomic_rmw, "atomic", ptr=1, mask=3))
        if hasattr(b, "create_atomic_cas"):  # (ptr, cmp, val, sem, scope): no mask
            self._set(b, "create_atomic_cas", self._wrap_access(b.create_atomic_cas, "atomic", ptr=0, mask=None))
        for name in ("create_addptr", "create_expand_dims", "create_broadcast", "create_splat", "create_reshape",
                     "create_trans", "create_cat", "create_join", "create_split", "create_select", "create_bitcast",
                     "create_int_to_ptr", "create_ptr_to_int", "create_unsplat"):  # fmt: skip
            if hasattr(b, name):
                self._set(b, name, self._wrap_tag(getattr(b, name)))
        self._set(interp, "_implicit_cvt", self._wrap_cvt(interp._implicit_cvt))
        self._set(interp.GridExecutor, "_init_args_hst", self._wrap_init(interp.GridExecutor._init_args_hst))
        self._set(interp.GridExecutor, "__call__", self._wrap_call(interp.GridExecutor.__call__))
        return True

    def uninstall(self):
        while self.restore:
            obj, name, value, had = self.restore.pop()
            if had:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
        self.launch = None

    # -- wrappers -----------------------------------------------------------------------------------

    def _wrap_init(self, original):
        checker = self

        def _init_args_hst(executor, args_dev, kwargs):
            args_hst, kwargs_hst = original(executor, args_dev, kwargs)
            checker.launch = checker._describe_launch(executor.fn, args_hst, kwargs_hst)
            return args_hst, kwargs_hst

        return _init_args_hst

    def _describe_launch(self, fn, args, kwargs) -> _Launch:
        regions, by_id = {}, {}
        try:
            bound = inspect.getcallargs(fn, *args, **kwargs)
        except TypeError:  # a wrong call: the interpreter itself will say so
            bound = {}
        for name, value in bound.items():
            t = getattr(value, "base", value)  # a TensorWrapper (reinterpreted dtype) holds its tensor in .base
            if isinstance(t, torch.Tensor):
                regions[name] = _Region(name, t)
                by_id[id(value)] = name
        code = getattr(fn, "__code__", None)
        return _Launch(getattr(fn, "__name__", "kernel"), code.co_filename if code else "", regions, by_id)

    def _wrap_cvt(self, original):
        checker = self

        def _implicit_cvt(arg):
            out = original(arg)
            launch = checker.launch
            if launch is not None and id(arg) in launch.by_id and hasattr(out, "handle"):
                out.handle.attr[_TAG] = launch.by_id[id(arg)]
            return out

        return _implicit_cvt

    def _wrap_tag(self, original):
        handle_type = self.interp.TensorHandle

        def tagged(*args, **kwargs):
            out = original(*args, **kwargs)
            tag = None
            for a in args:
                t = a.attr.get(_TAG) if isinstance(a, handle_type) else None
                if t is not None:
                    tag = t if tag in (None, t) else _MIXED
            if tag is not None:
                for o in out if isinstance(out, tuple) else (out,):
                    if isinstance(o, handle_type):
                        o.attr[_TAG] = tag
            return out

        return tagged

    def _wrap_call(self, original):
        checker = self

        def __call__(executor, *args, **kwargs):
            try:
                return original(executor, *args, **kwargs)
            except Exception as exc:
                cause = exc
                while cause is not None and not isinstance(cause, OutOfBounds):
                    cause = cause.__cause__
                if cause is not None:  # the interpreter wraps errors as InterpreterError(repr(e)): unwrap ours
                    raise OutOfBounds(str(cause)) from None
                raise
            finally:
                checker.launch = None

        return __call__

    def _wrap_access(self, original, kind, ptr, mask):
        checker = self

        def access(*args, **kwargs):
            if checker.launch is not None:
                try:
                    checker.check(kind, args[ptr], args[mask] if mask is not None else None)
                except OutOfBounds:
                    raise
                except Exception:  # noqa: BLE001 - a Triton laid out differently: skip the check, never break the kernel
                    pass
            return original(*args, **kwargs)

        return access

    # -- the check ----------------------------------------------------------------------------------

    def check(self, kind, ptrs, mask):
        launch = self.launch
        addresses = np.asarray(ptrs.data)
        if mask is not None:
            on = np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)
            addresses = addresses[on]
        else:
            addresses = addresses.ravel()
        if addresses.size == 0:
            return
        dtype = ptrs.get_element_ty() if hasattr(ptrs, "get_element_ty") else None
        nbytes = max(1, getattr(dtype, "primitive_bitwidth", 8) // 8)
        tag = ptrs.attr.get(_TAG)
        region = launch.regions.get(tag) if isinstance(tag, str) else None
        if region is not None:
            offsets, bad = region.bad(addresses, nbytes)
            if bad.any():
                raise OutOfBounds(self._message(kind, region, offsets[bad], through=True))
            return
        # A pointer whose origin we lost: it must at least land on an element of some tensor argument.
        bad = np.ones(addresses.shape, dtype=bool)
        for r in launch.regions.values():
            bad &= ~r.contains(addresses, nbytes)
            if not bad.any():
                return
        if not launch.regions:
            return
        stray = addresses[bad]
        nearest = min(launch.regions.values(), key=lambda r: r.distance(int(stray[0])))
        offsets, _ = nearest.bad(stray, nbytes)
        raise OutOfBounds(self._message(kind, nearest, offsets, through=False))

    def _where(self) -> str:
        """'program 3, softmax.py line 57': which program, and the line of the kernel's source."""
        from triton.runtime.interpreter import interpreter_builder as b

        idx, dims = getattr(b, "grid_idx", None), getattr(b, "grid_dim", (1, 1, 1))
        if idx is None:
            where = "program ?"
        elif tuple(dims[1:]) == (1, 1):
            where = f"program {idx[0]}"
        else:
            where = f"program {tuple(idx[: 2 if dims[2] == 1 else 3])}"
        here = os.path.dirname(__file__)
        frame = sys._getframe(1)
        while frame is not None:
            f = frame.f_code.co_filename
            if f == self.launch.code_file or not (f.startswith(here) or f"{os.sep}triton{os.sep}" in f
                                                  or f"{os.sep}numpy{os.sep}" in f):  # fmt: skip
                return f"{where}, {os.path.basename(f)} line {frame.f_lineno}"
            frame = frame.f_back
        return where

    def _message(self, kind, region: _Region, offsets: np.ndarray, *, through: bool) -> str:
        verb = {"load": "reads", "store": "writes", "atomic": "updates"}[kind]
        op = f"the {kind} through {region.arg}" if through else f"a {kind} (through a pointer derived from {region.arg} or another argument)"
        offsets = np.unique(offsets)
        past, before = offsets[offsets > region.hi], offsets[offsets < region.lo]
        if past.size:
            far = int(past.max() - region.hi)
            what = f"{past.size} element{'s' * (past.size != 1)} past the end of {region.name}"
            what += f", up to {far} past its last element" if far != past.size else ""
            advice = f"is the {kind} masked?" if kind != "atomic" else "is the atomic masked?"
        elif before.size:
            far = int(region.lo - before.min())
            what = f"{before.size} element{'s' * (before.size != 1)} before the start of {region.name}"
            what += f", up to {far} before its first element" if far != before.size else ""
            advice = "are the offsets computed from the program id and the strides?"
        else:
            n = f"{offsets.size} element{'s' * (offsets.size != 1)}"
            if region.tensor.dim() > 1 and region.tensor.stride(-1) == 1:
                what = f"{n} between the rows of {region.name}, outside it"
            else:
                what = f"{n} in the gaps between the elements of {region.name} (a strided view), outside it"
            advice = "address each row with its own stride, and mask the columns past the row's end"
        hint = next((h for h in reversed(self.hints) if h), None)
        return f"{self.launch.kernel} ({self._where()}): {op} {verb} {what} ({region.describe()}): {hint or advice}"


_checker = _Checker()


@contextlib.contextmanager
def memcheck(hint: str | None = None):
    """Within this block, an out-of-bounds load or store of an interpreted kernel raises :class:`OutOfBounds`.

    ``hint``: a sentence for the learner added to the message (for example
    "mask the loads and the store with cols < n_cols"); without it, a general
    one ("is the store masked?"). Usable as a decorator. Does nothing when
    kernels are not interpreted (see :func:`memcheck_status`).
    """
    c = _checker
    if c.depth == 0 and not c.install():
        yield
        return
    c.depth += 1
    c.hints.append(hint)
    try:
        yield
    finally:
        c.hints.pop()
        c.depth -= 1
        if c.depth == 0:
            c.uninstall()


def memcheck_status() -> tuple[bool, str]:
    """(True, "") when :func:`memcheck` checks kernels here, else (False, the reason)."""
    found = _checker._find() is not None
    return found, "" if found else _checker.reason
