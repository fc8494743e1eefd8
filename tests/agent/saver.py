"""A job that checkpoints in a loop the careful way, for tests of syncs that race with it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from spotd.agent.checkpoints import PROGRESS


class Saver:
    """A job checkpointing in a loop as careful jobs do: ``step.tmp`` then a rename over
    ``step``, and its progress the same way, as fast as it can (a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _put(self, name: str, text: str) -> None:
        tmp = self.directory / f"{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.directory / name)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step += 1
            self._put("step", str(self.step))
            self._put(PROGRESS, f"{self.step}/1000000")

    def __enter__(self) -> Saver:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        while self.step < 2 and self._thread.is_alive():  # its first checkpoint is there
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Rotator(Saver):
    """A trainer keeping its last two checkpoints as directories (``checkpoint-N/`` with a
    file and a subdirectory), the oldest removed as each new one is written."""

    def _run(self) -> None:
        import shutil

        while not self._stop.is_set():
            self.step += 1
            new = self.directory / f"checkpoint-{self.step}"
            (new / "optimizer").mkdir(parents=True)
            (new / "model").write_text(str(self.step))
            (new / "optimizer" / "state").write_text(str(self.step))
            shutil.rmtree(self.directory / f"checkpoint-{self.step - 2}", ignore_errors=True)
