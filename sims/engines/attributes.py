"""LLVM function attributes numba has no option for, for the lockstep kernels: full-width vectors, and inlining.

numba compiles each ``@njit`` function as an LLVM function of its own and offers no way to set that function's
attributes.  :func:`pipeline` returns numba's own nopython pipeline with its lowering pass replaced by one that
adds attributes to the function it lowers; pass it as ``pipeline_class`` to ``numba.njit``.  Two are used by the
lockstep driver (:mod:`sims.engines.lockstep`):

- ``"prefer-vector-width"="512"`` (:data:`WidePipeline`).  On x86 CPUs with AVX-512 (Skylake-SP and later),
  LLVM's tuning (``prefer-256-bit``) keeps vectorized loops at 256 bits, 4 doubles, unless a function says
  otherwise, because some of those CPUs lower their clock on 512-bit instructions.  The lockstep pass is arithmetic
  on independent lanes, so 8 doubles per instruction nearly halve its instruction count: on the 2-core Xeon
  (Sapphire Rapids) machine the reduced engine's run-steps per CPU-second rose by about 24%
  (``benchmarks/reduced_throughput.py``).  On a CPU without 512-bit vectors the attribute has no effect.
- ``alwaysinline`` besides (:data:`WideInlinePipeline`), for the driver's per-lane scalar step and lane start.
  numba passes a record argument as all of its fields, an array as seven values, so a call of the scalar step
  (engine, problem, stops and outputs records) moves some 200 values through the stack: about 75 ns of the 160 ns
  a step with an event cost, on liu2019's short runs (4 to 7 events in 40 to 400 steps) more than the steps
  themselves.  Inlining them in numba's IR (``inline="always"``) removes the call but retypes them inside the
  driver's loop, 4 s more compile time; LLVM's inliner, after numba links the compiled functions, removes it at no
  compile cost.  A liu2019 run costs 670 instead of 1,250-1,370 ns of engine time.

Neither attribute changes arithmetic: each lane's operations are the same IEEE operations (the lockstep kernels
allow no reassociation or contraction), so results are bit-identical with and without them (``tests/
test_reduced.py`` checks that the attributes are there and that they change no bit; the regression fixture and the
cold/warm cache check cover the results).  If a numba release changes the classes used here, the pipelines are None
and the kernels compile with numba's default pipeline: the same results, more slowly.
"""

from __future__ import annotations

from typing import Any

#: The attribute asking for full-width vectors.
WIDE = '"prefer-vector-width"="512"'


def pipeline(inline: bool = False) -> Any:
    """numba's nopython pipeline lowering every function with :data:`WIDE` (and ``alwaysinline`` if ``inline``), or
    None where numba's internals differ from those it was written against (numba 0.68)."""
    try:
        from numba.core import lowering
        from numba.core.compiler import CompilerBase, DefaultPassBuilder
        from numba.core.compiler_machinery import register_pass
        from numba.core.typed_passes import NativeLowering
    except ImportError:  # pragma: no cover - a numba without these classes
        return None

    class _Lower(lowering.Lower):
        def lower_normal_function(self, fndesc: Any) -> None:
            super().lower_normal_function(fndesc)
            # llvmlite's FunctionAttributes accepts only its list of keyword attributes; a string attribute is
            # written out as it is.
            set.add(self.function.attributes, WIDE)
            if inline:
                self.function.attributes.add("alwaysinline")

    @register_pass(mutates_CFG=True, analysis_only=False)
    class _Lowering(NativeLowering):
        _name = "wide_inline_native_lowering" if inline else "wide_native_lowering"

        @property
        def lowering_class(self) -> type:
            return _Lower

    class _Pipeline(CompilerBase):
        """numba's nopython pipeline, lowering with the attributes on the function."""

        def define_pipelines(self) -> list:
            pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
            pm.passes[:] = [(_Lowering if cls is NativeLowering else cls, what) for cls, what in pm.passes]
            pm.finalize()
            return [pm]

    return _Pipeline


#: ``pipeline_class`` for full-width vectors (module docstring); None if unavailable.
WidePipeline = pipeline()
#: ``pipeline_class`` for full-width vectors and ``alwaysinline``; None if unavailable.
WideInlinePipeline = pipeline(inline=True)


def options(inline: bool = False) -> dict[str, Any]:
    """The ``numba.njit`` options selecting :data:`WidePipeline` (or :data:`WideInlinePipeline`); none where it is
    unavailable."""
    cls = WideInlinePipeline if inline else WidePipeline
    return {} if cls is None else {"pipeline_class": cls}
