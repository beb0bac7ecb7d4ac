"""Errors raised when a dataset copy on disk is missing, incomplete or malformed.

A user points mtlbench at a folder it did not write. When something in it is wrong, the error
must say what is wrong and which file, so that the user can fix the copy instead of debugging a
stack trace from deep inside a decoder. Both classes subclass ``ValueError`` (bad data), and the
missing-file one also ``FileNotFoundError``, so generic handlers keep working.
"""
from __future__ import annotations

from mtlbench.errors import UserError

__all__ = ['DatasetError', 'DatasetNotFoundError']


class DatasetError(UserError, ValueError):
    """A dataset file exists but its content is not what the layout promises.

    Examples: an image that does not decode, a label map whose size differs from its image,
    label values that are neither a class nor 255, normals without 3 channels, depth with NaN.
    The message names the problem and the file.
    """


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data root, a split file, or files listed in a split are absent."""
