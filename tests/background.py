"""A job a test session runs once in a background thread, in a temporary directory of its own, while the suite goes
on: the numba cache probe (tests/conftest.py), the docs build (tests/test_docs.py) and the notebook runs
(tests/test_notebooks.py), started by ``tests/conftest.py`` when the tests that need them are collected."""

from __future__ import annotations

import shutil
import tempfile
import threading


class BackgroundJob:
    """:meth:`start` runs :meth:`run` (a subclass's) once in a daemon thread with a fresh directory ``self.dir``;
    :meth:`join` waits for it; :meth:`cleanup` removes the directory once the thread is done."""

    #: Prefix of the job's temporary directory.
    prefix = "shallowres-job-"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self.dir = ""

    def start(self, *args: object) -> None:
        """Start the job (once; later calls do nothing), passing ``args`` to :meth:`run`."""
        if self._thread is None:
            self.dir = tempfile.mkdtemp(prefix=self.prefix)
            self._thread = threading.Thread(target=self.run, args=args, daemon=True)
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def join(self) -> None:
        """Wait for the job to end (if it was started)."""
        if self._thread is not None:
            self._thread.join()

    def cleanup(self) -> None:
        if self.dir and (self._thread is None or not self._thread.is_alive()):
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, *args: object) -> None:
        raise NotImplementedError
