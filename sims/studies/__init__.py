"""Studies built from many runs: parameter sweeps with persisted, verified chunks (:mod:`~sims.studies.sweep`,
:mod:`~sims.studies.store`), the papers' tables (:mod:`~sims.studies.tables`) and their configs
(``sims/studies/configs/``)."""
