"""Progress notes while a folder grows: a hub download of many gigabytes inside one step.

Only real growth is reported, so a download that hangs still lets the operator's Stalled condition
fire, while a slow but moving one does not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_trainer.steps.saving import folder_bytes, human_bytes

INTERVAL_SECONDS = 10.0


@contextmanager
def reporting_growth(folder: Path, what: str, note: Callable[[str], None],
                     interval: float = INTERVAL_SECONDS) -> Iterator[None]:
    """While the body runs, call ``note("<what>: 1.23 GB downloaded")`` every ``interval`` seconds in
    which ``folder`` grew."""
    start = last = folder_bytes(folder)
    stop = threading.Event()

    def watch() -> None:
        nonlocal last
        while not stop.wait(interval):
            size = folder_bytes(folder)
            if size > last:
                last = size
                note(f"{what}: {human_bytes(size - start)} downloaded")

    thread = threading.Thread(target=watch, name="growth", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
