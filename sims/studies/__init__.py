"""Studies built from many runs: parameter sweeps (the file's schema :mod:`~sims.studies.config`, its cells
:mod:`~sims.studies.spec`, running them :mod:`~sims.studies.sweep`, their persisted, verified chunks
:mod:`~sims.studies.store`, the per-run tables :mod:`~sims.studies.per_run` and results
:mod:`~sims.studies.summary`), the papers' tables (:mod:`~sims.studies.tables`) and their configs
(``sims/studies/configs/``); the names the command line offers before it runs anything
(:mod:`~sims.studies.names`)."""
