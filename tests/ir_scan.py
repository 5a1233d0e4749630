"""Scan the optimized LLVM IR of every numba kernel for floating-point reductions whose vectorization depends on
where buffers happen to lie in memory.

Why: with ``fastmath`` ``reassoc`` LLVM vectorizes a loop reduction (summing in 8-lane partial sums instead of in
order).  If the same loop also *stores* to memory, LLVM cannot prove the stores do not overlap the loads, so it
guards the vector loop with a runtime check (``vector.memcheck``: "is the store pointer less than 256 bytes after
a load pointer?") and falls back to the in-order scalar loop when the check fails.  The two paths round
differently, and which one runs depends on the heap layout of the work buffers -- so two identical calls could
differ in the last bits.  Kernels must therefore keep reductions and stores in separate loops,
or keep all the buffers of such a loop in one allocation (fixed distances: the same path on every call).

The scan is conservative: it flags every such check whose addresses come from two allocations, including checks
that cannot fail for distinct allocations (same index into two arrays longer than the vector block).  Telling
those apart from the harmful kind (offset indexing, as in the SGD backward pass that showed the defect) is not
worth it when splitting a loop costs nothing measurable.

Run as a script (``python tests/ir_scan.py``) it compiles every kernel from scratch (inspection is impossible for
code loaded from numba's cache, so it points ``NUMBA_CACHE_DIR`` at a fresh directory) and prints one JSON line
per offending loop; ``tests/test_sims_determinism.py`` runs it in a subprocess and requires no output.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

_DEF = re.compile(r"^\s+(%[\w.\-]+) = (.*)$")
_FOLLOW = {"icmp", "and", "or", "xor", "add", "sub", "mul", "shl", "lshr", "ashr", "zext", "sext", "trunc", "select"}


def _pointer_roots(value: str, defs: dict[str, str], is_ptr: bool, seen: set[str]) -> set[str]:
    """The allocations a runtime-check operand is computed from: follow address arithmetic (``getelementptr`` to its
    base, ``ptrtoint``, integer and comparison ops) back to pointers defined otherwise (loads, calls, arguments)."""
    if value in seen:
        return set()
    seen.add(value)
    ins = defs.get(value)
    if ins is None:
        return {value} if is_ptr else set()
    words = ins.replace(",", " ").split()
    op = words[0]
    if op == "getelementptr":
        base = re.search(r"ptr (%[\w.\-]+)", ins)
        return _pointer_roots(base.group(1), defs, True, seen) if base else {value}
    if op == "ptrtoint":
        return _pointer_roots(re.search(r"ptr (%[\w.\-]+)", ins).group(1), defs, True, seen)
    if op in _FOLLOW:
        ptr_operands = op == "icmp" and " ptr " in ins
        out: set[str] = set()
        for operand in re.findall(r"%[\w.\-]+", ins):
            out |= _pointer_roots(operand, defs, ptr_operands or is_ptr and op == "select", seen)
        return out
    return {value} if is_ptr else set()


def guarded_reductions(ir: str) -> list[dict[str, str]]:
    """Vectorized loops with a reassociated floating-point reduction behind a runtime alias check whose addresses
    come from more than one allocation (so its outcome depends on the heap layout), per function."""
    found = []
    for func in re.split(r"\n(?=define )", ir):
        head = re.match(r"define [^@]*@(\S+?)\(", func)
        if head is None:
            continue
        blocks: dict[str, list[str]] = {}
        defs: dict[str, str] = {}
        order: list[str] = []
        cur = None
        for line in func.split("\n"):
            m = re.match(r"^([\w.\-]+):", line)
            if m:
                cur = m.group(1)
                order.append(cur)
                blocks[cur] = []
            elif cur is not None:
                blocks[cur].append(line)
                d = _DEF.match(line)
                if d:
                    defs[d.group(1)] = d.group(2)
        for i, name in enumerate(order):
            if not name.startswith("vector.memcheck"):
                continue
            body = next((b for b in order[i:] if b.startswith("vector.body")), None)
            if body is None:
                continue
            text = "\n".join(blocks[body])
            phis = set(re.findall(r"(%vec\.phi\S*) = phi <\d+ x double>", text))
            if not any(re.search(rf"fadd [^%]*<\d+ x double> (%\S+, )?{re.escape(p)}\b", text) for p in phis):
                continue
            branch = re.search(r"br i1 (%[\w.\-]+),", "\n".join(blocks[name]))
            roots = _pointer_roots(branch.group(1), defs, False, set()) if branch else {"?"}
            if len(roots) > 1:
                found.append({"function": _demangle(head.group(1)), "check": name, "loop": body,
                              "allocations": sorted(roots)})
    return found


def _demangle(name: str) -> str:
    """``_ZN4sims13finite_sample15_block_backwardB3v86...`` -> ``sims.engines.finite_sample._block_backward``."""
    rest = name.removeprefix("_ZN")
    parts = []
    while (m := re.match(r"(\d+)", rest)) is not None:
        n = int(m.group(1))
        start = m.end()
        parts.append(rest[start : start + n])
        rest = rest[start + n :]
    return ".".join(parts) or name


def _compile_everything() -> list:
    """Run every engine once at a tiny size (so every kernel is compiled) and return the numba dispatchers."""
    import numpy as np

    import sims
    from sims.engines import expansion as ex_engine
    from sims.engines import expansion_kernels, finite_sample, gd, laperm, reduced, sgd
    from sims.methods import distill

    small = dict(k=5, p=4, runs=3, steps=30, seed=0)
    sched = sims.Schedule.constant(0.1, 0.3)
    for engine in ("vector", "reduced"):  # the full-coordinate engine and the order-parameter one (lockstep)
        sims.simulate(model="resnet", schedule=sched, engine=engine, **small)
        sims.simulate(model="cnn-unnormalized", schedule=sched, engine=engine, **small)
    sims.simulate(model="resnet", schedule=sched, algorithm="sgd", batch_size=8, **small)
    sims.simulate(model="resnet", schedule=sched, algorithm="gd-fixed", batch_size=8, **small)
    for algorithm in ("gd", "sgd"):
        sims.simulate(model="resnet", schedule=sched, algorithm=algorithm, batch_size=8,
                      expansion=sims.Expansion(target="both", depth=2), **small)
    from sims.methods import expansion

    expansion.end_to_end(model="resnet", w0=np.full(4, 0.1), a0=np.ones(5), w_star=np.ones(4), a_star=np.ones(5),
                         schedule=sched, steps=5, target="both", depth=2)
    for fade_engine in ("vector", "auto"):
        sims.simulate_fading(schedule=sched, fade=distill.Fade("linear", 10, engine=fade_engine), **small)
    for inner in ("gd", "adam"):
        sims.simulate_laperm(schedule=sched, sync_every=5, inner=inner, **small)
    for sampler in ("full", "projected"):
        finite_sample.minibatch_gradient(np.ones(4), np.ones(5), np.ones(4), np.ones(5), normalized=True,
                                         batch_size=8, states=np.ones((2, 4), dtype=np.uint64), sampler=sampler)
    finite_sample.training_loss(np.ones(4), np.ones(5), np.ones(4), np.ones(5), normalized=True, batch_size=8,
                                states=np.ones((2, 4), dtype=np.uint64))
    dispatchers = []
    for module in (gd, reduced, sgd, ex_engine, laperm, finite_sample, expansion_kernels, distill):
        for obj in vars(module).values():
            if hasattr(obj, "inspect_llvm") and getattr(obj, "signatures", None):
                dispatchers.append(obj)
    return dispatchers


def main() -> int:
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="shallowres-ir-")
    scanned = 0
    names = []
    for disp in _compile_everything():
        names.append(disp.py_func.__qualname__)
        for ir in disp.inspect_llvm().values():
            scanned += 1
            for hit in guarded_reductions(ir):
                print(json.dumps({"kernel": f"{disp.py_func.__module__}.{disp.py_func.__name__}", **hit}))
    print(json.dumps({"scanned": scanned, "kernels": sorted(names)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
