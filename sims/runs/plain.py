"""The plain network's engines in the registry: population GD (``"gd"``) and the finite-sample engines (``"sgd"``,
``"gd-fixed"``), the engines of ``sims.simulate(algorithm=...)`` without ``engine=``."""

from __future__ import annotations

from typing import Any

from sims.engines import finite_sample, gd, sgd
from sims.runs.registry import Built, Call, EngineSpec, Setup, no_noise, register_engine


class GDSpec(EngineSpec):
    """Population GD with the closed-form gradients (:mod:`sims.engines.gd`)."""

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        eng = gd.plain(setup.WT, setup.A, call.model != "cnn-unnormalized")
        return Built(gd.run_range, gd.workspace, eng, no_noise(setup.sched))


class FiniteSampleSpec(EngineSpec):
    """Online SGD and GD on a fixed sample (:mod:`sims.engines.sgd`); never ``trapped`` (the steps are noisy)."""

    algorithms = ("sgd", "gd-fixed")

    def build(self, opts: Any, call: Call, setup: Setup) -> Built:
        eng = finite_sample.engine(call.algorithm, call.batch_size, setup.WT, setup.A, setup.draws.WS,
                                   setup.draws.AS, call.model != "cnn-unnormalized")
        return Built(sgd.run_range, sgd.workspace, eng, False)


GD = register_engine("gd", GDSpec())
SGD = register_engine("sgd", FiniteSampleSpec())
register_engine("gd-fixed", SGD)
