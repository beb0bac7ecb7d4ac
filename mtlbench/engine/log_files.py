"""Log files hold plain text: ANSI colour codes are stripped from what a file handler writes.

mmengine colours only its terminal prefix, but a message can carry colour codes of its own
(``termcolor.colored`` in a hook or a library, forced with ``FORCE_COLOR`` even when stdout is
not a terminal). In a ``.log`` file they are noise (``^[[31m``) that breaks ``grep`` and log
viewers. :func:`plain_file_handlers` wraps the formatter of every file handler of a logger so
that the file gets the text without escapes; the terminal keeps its colours.
"""
from __future__ import annotations

import logging
import re

__all__ = ['ANSI_ESCAPE', 'strip_ansi', 'PlainFormatter', 'plain_file_handlers']

#: CSI sequences (colours, cursor moves: ``ESC [ ... letter``) and two-byte escapes.
ANSI_ESCAPE = re.compile(r'\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])')


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return ANSI_ESCAPE.sub('', text)


class PlainFormatter(logging.Formatter):
    """Formats with ``inner`` (the handler's own formatter), then strips ANSI escapes."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(self.inner.format(record))


def plain_file_handlers(logger: logging.Logger) -> int:
    """Make every ``FileHandler`` of ``logger`` write plain text; returns how many were wrapped."""
    n = 0
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and not isinstance(handler.formatter, PlainFormatter):
            handler.setFormatter(PlainFormatter(handler.formatter or logging.Formatter()))
            n += 1
    return n
