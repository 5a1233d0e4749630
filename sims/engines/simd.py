"""Full-width vectors for the lockstep kernels: numba's pipeline with one attribute more on each compiled function.

The lockstep driver (:mod:`sims.engines.lockstep`) advances a block of runs side by side so that LLVM vectorizes its
pass across runs.  On x86 CPUs with AVX-512 (Skylake-SP and later), LLVM's tuning for those CPUs
(``prefer-256-bit``) keeps vectorized loops at 256 bits, 4 doubles, unless a function says otherwise, because some
of those CPUs lower their clock on 512-bit instructions.  The lockstep pass is arithmetic on independent lanes
(no reduction), so 8 doubles per instruction nearly halve its instruction count: measured on the 2-core Xeon
(Sapphire Rapids) machine, the reduced engine's run-steps per CPU-second rise by about 17% (``benchmarks/
reduced_throughput.py``).

numba has no option for a function attribute, so :class:`WidePipeline` is numba's own nopython pipeline with its
lowering pass replaced by one that adds the LLVM function attribute ``"prefer-vector-width"="512"`` to the function
it lowers.  Pass it as ``pipeline_class`` to ``numba.njit``.  The attribute changes which vector instructions are
used, not the arithmetic: each lane's operations are the same IEEE operations (the lockstep kernels allow no
reassociation), so results are bit-identical to the 256-bit code (``tests/test_reduced.py`` checks the attribute
is there; the regression fixture and the cold/warm cache check, the results).  On a CPU without 512-bit vectors
the attribute has no effect.  If a numba release changes the classes used here, :data:`WidePipeline` is None and
the kernels compile with numba's default pipeline: the same results, at 256 bits.
"""

from __future__ import annotations

from typing import Any

#: The LLVM function attribute the pipeline adds.
ATTRIBUTE = '"prefer-vector-width"="512"'


def _make_pipeline() -> Any:
    """The pipeline class, or None where numba's internals differ from what it was written against (numba 0.68)."""
    try:
        from numba.core import lowering
        from numba.core.compiler import CompilerBase, DefaultPassBuilder
        from numba.core.compiler_machinery import register_pass
        from numba.core.typed_passes import NativeLowering
    except ImportError:  # pragma: no cover - a numba without these classes
        return None

    class _WideLower(lowering.Lower):
        def lower_normal_function(self, fndesc: Any) -> None:
            super().lower_normal_function(fndesc)
            # llvmlite's FunctionAttributes accepts only its list of keyword attributes; a string attribute is
            # written out as it is.
            set.add(self.function.attributes, ATTRIBUTE)

    @register_pass(mutates_CFG=True, analysis_only=False)
    class WideNativeLowering(NativeLowering):
        _name = "wide_native_lowering"

        @property
        def lowering_class(self) -> type:
            return _WideLower

    class _WidePipeline(CompilerBase):
        """numba's nopython pipeline, lowering with :data:`ATTRIBUTE` on the function."""

        def define_pipelines(self) -> list:
            pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
            pm.passes[:] = [(WideNativeLowering if cls is NativeLowering else cls, what) for cls, what in pm.passes]
            pm.finalize()
            return [pm]

    return _WidePipeline


#: ``pipeline_class`` for ``numba.njit``: full-width vectors (module docstring); None if unavailable.
WidePipeline = _make_pipeline()


def options() -> dict[str, Any]:
    """The ``numba.njit`` options that select :data:`WidePipeline` (none where it is unavailable)."""
    return {} if WidePipeline is None else {"pipeline_class": WidePipeline}
