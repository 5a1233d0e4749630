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

Run as a script (``python tests/ir_scan.py``) it runs every engine (:func:`engine_results`, compiling every kernel
from scratch: inspection is impossible for code loaded from numba's cache, so without ``NUMBA_CACHE_DIR`` it points
numba at a fresh directory) and prints one JSON line per offending loop.  ``tests/conftest.py`` runs it once per
test session in the background (the numba cache probe): a first child compiles, saves the engines' results and
scans; a second loads every kernel from the first one's cache and saves the results again.
``tests/test_sims_determinism.py`` requires no offending loop, and the two children's results bit-identical.
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


def engine_results() -> dict:
    """Run every engine and compiled helper (so that every kernel is compiled) on small problems and return their
    results as flat float arrays, by case name: population GD on the full coordinates and on the order parameters
    (two models), SGD, fixed-sample GD, expansions under GD and SGD (and the ``+Init`` pretraining), the end-to-end
    dynamics, the fading shortcut on both its engines, LaPerm with both inner optimizers, and the minibatch
    gradient and training loss helpers."""
    import numpy as np

    import sims
    from sims.engines import finite_sample
    from sims.methods import distill, expansion

    def flat(res) -> np.ndarray:
        return np.concatenate([np.asarray(x, dtype=float).ravel() for x in (
            res.final_loss, res.final_phi, res.fitted_rate, res.steps, res.w, res.a, res.trajectory)])

    small = dict(k=5, p=4, runs=8, steps=300, seed=0)
    sphere = sims.Init(w="sphere")
    sched = sims.Schedule.two_stage(50, 1e-3, 0.3, 0.1, 0.3)
    out = {}
    for engine in ("vector", "reduced"):  # the full-coordinate engine and the order-parameter one (lockstep)
        for model in ("resnet", "cnn-unnormalized"):
            out[f"gd-{engine}/{model}"] = flat(sims.simulate(model=model, schedule=sched, engine=engine, init=sphere,
                                                                  **small))
    for algorithm in ("sgd", "gd-fixed"):
        out[algorithm] = flat(sims.simulate(model="resnet", schedule=sched, algorithm=algorithm, batch_size=8,
                                            **small))
    for algorithm in ("gd", "sgd"):
        out[f"expansion/{algorithm}"] = flat(sims.simulate(
            model="resnet", schedule=sched, algorithm=algorithm, batch_size=8,
            expansion=sims.Expansion(target="both", depth=2), **small))
    out["expansion-plus-init"] = flat(sims.simulate(model="resnet", schedule=sched, expansion=sims.Expansion(
        target="both", depth=2, init="plus-init", pretrain_steps=50), **small))
    e2e = expansion.end_to_end(model="resnet", w0=np.full(4, 0.1), a0=np.ones(5), w_star=np.ones(4),
                               a_star=np.ones(5), schedule=sched, steps=300, target="both", depth=2)
    out["end_to_end"] = np.concatenate([np.asarray(v, dtype=float).ravel() for v in e2e.values()])
    for fade_engine in ("vector", "auto"):
        out[f"fading-{fade_engine}"] = flat(sims.simulate_fading(
            schedule=sched, fade=distill.Fade("linear", 100, engine=fade_engine), **small))
    for inner in ("gd", "adam"):
        out[f"laperm-{inner}"] = flat(sims.simulate_laperm(schedule=sched, sync_every=20, inner=inner, **small))
    # the lockstep engines over 2,000 steps (with contraction to FMAs allowed, their cold and warm caches differed)
    kw = dict(k=6, p=5, runs=40, steps=2000, schedule=sims.Schedule.two_stage(50, 1e-4, 0.3, 0.02, 0.3), seed=2)
    for model in ("resnet", "cnn-unnormalized"):
        for engine in ("reduced", "vector"):
            out[f"gd-{engine}/{model}/2000-steps"] = flat(sims.simulate(model=model, engine=engine, init=sphere, **kw))
    out["fading-auto/2000-steps"] = flat(sims.simulate_fading(fade=sims.Fade("linear", steps=300), **kw))
    rng = np.random.default_rng(0)
    WT, A, WS, AS = rng.normal(size=(7, 4)), rng.normal(size=(7, 5)), rng.normal(size=(1, 4)), rng.normal(size=(1, 5))
    for sampler in ("full", "projected"):
        out[f"minibatch_gradient-{sampler}"] = np.concatenate([g.ravel() for g in finite_sample.minibatch_gradient(
            WT, A, WS, AS, normalized=True, batch_size=40, states=_states(7), sampler=sampler)])
    out["training_loss"] = finite_sample.training_loss(WT, A, WS, AS, normalized=True, batch_size=40,
                                                       states=_states(7))
    return out


#: The cases of :func:`engine_results`.
CASES = ("gd-vector/resnet", "gd-vector/cnn-unnormalized", "gd-reduced/resnet", "gd-reduced/cnn-unnormalized",
         "sgd", "gd-fixed", "expansion/gd", "expansion/sgd", "expansion-plus-init", "end_to_end", "fading-vector",
         "fading-auto", "gd-reduced/resnet/2000-steps", "gd-vector/resnet/2000-steps",
         "gd-reduced/cnn-unnormalized/2000-steps", "gd-vector/cnn-unnormalized/2000-steps", "fading-auto/2000-steps",
         "laperm-gd", "laperm-adam", "minibatch_gradient-full", "minibatch_gradient-projected",
         "training_loss")


def _states(runs: int):
    import numpy as np

    return np.arange(4 * runs, dtype=np.uint64).reshape(runs, 4) * np.uint64(977) + np.uint64(1)


def _dispatchers() -> list:
    """The numba dispatchers of the engines' modules that have compiled code."""
    from sims.engines import expansion as ex_engine
    from sims.engines import expansion_kernels, finite_sample, gd, laperm, reduced, sgd
    from sims.methods import distill

    dispatchers = []
    for module in (gd, reduced, sgd, ex_engine, laperm, finite_sample, expansion_kernels, distill):
        for obj in vars(module).values():
            if hasattr(obj, "inspect_llvm") and getattr(obj, "signatures", None):
                dispatchers.append(obj)
    return dispatchers


def main(argv: list[str]) -> int:
    """``ir_scan.py [--results FILE] [--no-scan]``: run :func:`engine_results` (compiling every kernel), save them
    to ``FILE`` (an ``.npz``) if asked, then (unless ``--no-scan``) print the offending loops.  Without
    ``NUMBA_CACHE_DIR`` in the environment it compiles into a fresh directory; the cold-and-warm-cache test sets
    one, runs this once to compile and scan, and once more with ``--no-scan`` to load from that cache."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="shallowres-ir-")
    results = engine_results()
    if "--results" in argv:
        import numpy as np

        np.savez(argv[argv.index("--results") + 1], **results)
    if "--no-scan" in argv:
        return 0
    scanned = 0
    names = []
    for disp in _dispatchers():
        names.append(disp.py_func.__qualname__)
        for ir in disp.inspect_llvm().values():
            scanned += 1
            for hit in guarded_reductions(ir):
                print(json.dumps({"kernel": f"{disp.py_func.__module__}.{disp.py_func.__name__}", **hit}))
    print(json.dumps({"scanned": scanned, "kernels": sorted(names)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
