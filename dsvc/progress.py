"""Progress display for long work: a thread-safe byte counter drawn with tqdm on stderr.

A bar appears only once its work has run for a second (tqdm's ``delay``;
``DSVC_PROGRESS_DELAY`` changes it), so every step that takes longer than that shows one
and quick steps stay silent.

Work-layer functions take a plain ``progress(n_bytes)`` callback; the dataset and CLI
layers create a :class:`Progress` and pass its ``update``. Bars are hidden when stderr
is not a terminal (tqdm's own rule), when ``DSVC_QUIET`` is set, or when ``enabled`` is
False.
"""

from __future__ import annotations

import os
import sys
import threading

from tqdm import tqdm


class Progress:
    """A byte progress bar that many threads may update at once."""

    def __init__(
        self, desc: str, total: int | None = None, *, enabled: bool = True, unit: str = "B"
    ) -> None:
        disable: bool | None = None  # None: tqdm hides itself when stderr is not a tty
        if not enabled or os.environ.get("DSVC_QUIET"):
            disable = True
        if os.environ.get("DSVC_FORCE_PROGRESS"):
            disable = False
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=True,
            unit_divisor=1024,
            disable=disable,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.2,
            delay=float(os.environ.get("DSVC_PROGRESS_DELAY", "1.0")),
        )
        self._lock = threading.Lock()
        self.count = 0

    def set_total(self, total: int | None) -> None:
        """Set the total once it is known (the bar may start before)."""
        with self._lock:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int) -> None:
        with self._lock:
            self.count += n
            self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
