"""A progress bar that appears only for long work (``tqdm.auto``: a widget in notebooks, text in
terminals). Short work stays silent: the bar is created once ``after_s`` seconds have passed."""

from __future__ import annotations

import time

SHOW_AFTER_S = 2.0


class Progress:
    """``update(n)`` as units of ``total`` finish; ``close()`` at the end (also on error)."""

    def __init__(self, total: int, desc: str, after_s: float | None = None):
        self.total, self.desc = int(total), desc
        self.after_s = SHOW_AFTER_S if after_s is None else after_s
        self.done = 0
        self._start = time.perf_counter()
        self._bar = None
        self._failed = False

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is None and not self._failed and time.perf_counter() - self._start > self.after_s:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self.total, initial=self.done, desc=self.desc, leave=False)
            except Exception:  # no tqdm, or no display: the work goes on without a bar
                self._failed = True
            return
        if self._bar is not None:
            self._bar.update(n)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
