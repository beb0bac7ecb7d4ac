"""Progress lines with an ETA for long loops outside the mmengine Runner.

Training and evaluation log their own progress through mmengine (``eta:`` in every logged
iteration); ``data synth``, ``data verify`` and ``bench`` use :class:`Progress`, which prints
``label: 12/48 (25%) 0:00:07 elapsed, eta 0:00:21`` at most every few seconds (and at the end)
so that a slow step is never silent, without flooding a log. Lines go to stderr by default so
that a command's result on stdout stays parseable.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

__all__ = ['Progress', 'progress', 'format_duration']

T = TypeVar('T')


def format_duration(seconds: float) -> str:
    """``0:01:05``; hours go past 24 (``27:00:00``), as a GPU-hours estimate reads best."""
    total = int(max(seconds, 0))
    return f'{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}'



class Progress:
    """Counts finished items and reports ``done/total``, elapsed time and ETA.

    Args:
        total: number of items.
        label: what is being done (``'synth pascal_context'``).
        every_s: minimum seconds between two lines; the first and the last item always print
            (the first tells that the work started and how fast it goes).
        echo: called with each line; default: print to stderr.
        clock: time source (tests pass a fake one).
    """

    def __init__(self, total: int, label: str, every_s: float = 5.0,
                 echo: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.every_s = int(total), label, float(every_s)
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock = clock
        self.start = clock()
        self.done = 0
        self._last: Optional[float] = None

    def line(self) -> str:
        elapsed = self.clock() - self.start
        pct = f' ({100 * self.done / self.total:.0f}%)' if self.total else ''
        text = f'{self.label}: {self.done}/{self.total}{pct} {format_duration(elapsed)} elapsed'
        if 0 < self.done < self.total:
            text += f', eta {format_duration(elapsed / self.done * (self.total - self.done))}'
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self._last is None or self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.echo(self.line())


def progress(items: Iterable[T], total: int, label: str, **kwargs) -> Iterator[T]:
    """Yield ``items`` and report progress after each (see :class:`Progress`)."""
    bar = Progress(total, label, **kwargs)
    for item in items:
        yield item
        bar.update()
