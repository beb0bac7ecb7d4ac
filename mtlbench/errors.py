"""The errors a user can fix, told apart from bugs.

``mtlbench`` prints an error of a class below as one line (``mtlbench run: error: ...``, exit
code 2) and lets every other exception keep its traceback, because that one is a bug (or a
problem mtlbench does not know how to explain). The line is the whole story only when the code
that raised knew the cause was the user's input: a command-line option, a config value, a file
or folder given to it. Code that validates such input raises one of these classes (or a class
deriving from :class:`UserError`: ``ConfigError``, ``DatasetError``, ``CheckpointError``,
``PretrainedLoadError``, ``NonFiniteLossError``, ``OutputDirError``); a plain ``ValueError`` or
``KeyError`` means "this should not happen" and is shown with its traceback.

Each class also derives from the built-in exception it refines (``ValueError``, ``KeyError``,
``FileNotFoundError``), so ``except ValueError`` in a caller keeps working.

This module imports nothing heavy: the command line loads it before torch.
"""
from __future__ import annotations

__all__ = ['UserError', 'OptionError', 'UnknownNameError', 'InputNotFoundError']


class UserError(Exception):
    """Base of every error caused by the user's input; the CLI prints it as one line."""


class OptionError(UserError, ValueError):
    """A command-line option or config value that cannot be used (out of range, contradictory)."""


class UnknownNameError(UserError, KeyError):
    """A name (method, method option, task, format) that does not exist; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ''


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""
