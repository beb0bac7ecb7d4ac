"""Registered methods. Every module in this package is imported (and so registered) here:
adding a method is adding one file (or package) to this folder, with no edit elsewhere."""
import importlib
import pkgutil

__all__ = []

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith('_'):
        importlib.import_module(f'{__name__}.{_info.name}')
