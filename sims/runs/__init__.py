"""The Python pipeline of one batch of runs: the training problem (samplers of teachers and initializations,
step-size schedules), :func:`sims.runs.simulate.simulate` (validate, draw, run an engine, classify, fit rates), the
registry of engines it runs (:mod:`sims.runs.registry`; the plain network's in :mod:`sims.runs.plain`), the
classification against the theory's fixed points, and the memory estimate that refuses what the machine cannot
hold."""
