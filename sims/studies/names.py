"""What the command line needs before it runs anything: the names and sizes its parser offers, and
:class:`SweepError`, the user error it reports as one line.  :func:`sims.cli.build_parser` is built from these
alone, without the sweep machinery (:mod:`sims.studies.sweep`, :mod:`sims.studies.tables`: pandas, pydantic,
matplotlib), so ``shallowres --help`` and an argument error take the time of ``import sims`` only.
:mod:`sims.studies.tables` and :mod:`sims.studies.spec` take them from here (the same objects)."""

from __future__ import annotations

#: The packaged tables (``shallowres table NAME``), each a sweep file in ``sims/studies/configs/``.
TABLES: tuple[str, ...] = ("liu2019", "liu2019-flow", "du2018", "two-phase", "distill", "laperm", "expand", "scaling")
#: The formats a table or summary is printed in (``--format``).
FORMATS: tuple[str, ...] = ("markdown", "latex", "csv")

#: A sweep of at least ``LARGE_TRIALS`` runs per cell whose chunk is not given explicitly (``--chunk``, the
#: ``chunk`` override) runs chunks of :func:`sims.studies.spec.auto_chunk` runs (``LARGE_CHUNK`` to
#: ``MAX_AUTO_CHUNK``) if its file's are smaller: a chunk's fixed costs (the draws' and the engine's parallel start
#: and its tail of runs finishing one by one, the classification, one Parquet file, two fsyncs) are then a small
#: part of its work, and a 45-cell sweep of a million runs per cell has 450 chunk files, not 45,000.  The chunk is
#: part of the fingerprint; a directory written with the file's chunk is resumed with it
#: (:func:`sims.studies.sweep.adopt_chunk`).
LARGE_TRIALS = 100_000
LARGE_CHUNK = 20_000
#: The largest automatic chunk: a tenth of the trials, up to this (a chunk of the order-parameter engine holds a
#: few hundred bytes per run, so 100,000 runs are tens of MB).
MAX_AUTO_CHUNK = 100_000


class SweepError(ValueError):
    """A problem with a sweep's configuration or output directory (one readable line).  Defined here so that the
    command line catches it without importing the sweep machinery; :mod:`sims.studies.spec` and
    :mod:`sims.studies.sweep` export it."""
