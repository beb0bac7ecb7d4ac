"""Which of the checkpoint-loading APIs mtlbench relies on the installed torch has, each tried
for real: the evidence behind the ``torch`` floor in ``pyproject.toml``.

Checks, in the order a run meets them:

* ``safe_globals``: resuming (:func:`mtlbench.engine.checkpoint.safe_torch_load`) reads an
  mmengine checkpoint holding numpy objects with ``weights_only=True`` and an allow-list.
* ``(class, name)`` allow-list entries: ``--eval-only`` on an mtlbench or MTLoRA-reference
  checkpoint (:func:`mtlbench.interop.checkpoints.read_checkpoint`) allows the reference's yacs
  ``CfgNode`` under its pickled name, rebuilt as an ``OrderedDict``.
* ``get_unsafe_globals_in_checkpoint``: a checkpoint that would run code is refused naming
  what it holds.

Prints one line per check and exits 1 when any fails. Used by ``tools/check_torch_floor.sh``.
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo this-should-never-run',))


def main() -> int:
    import numpy as np
    import torch

    from mtlbench.engine.checkpoint import CheckpointError, safe_torch_load
    from mtlbench.interop.checkpoints import read_checkpoint

    print(f'torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}')
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        resume = os.path.join(tmp, 'resume.pth')
        # a numpy dtype: a class on mtlbench's allow-list that torch's own list lacks
        torch.save({'meta': {'dtype': np.dtype('float64'), 'epoch': 3},
                    'state_dict': {'w': torch.ones(2)}}, resume)
        evil = os.path.join(tmp, 'evil.pth')
        torch.save({'model': {'w': torch.zeros(1)}, 'config': _RunsCode()}, evil, pickle_module=pickle)

        def check(name, fn):
            nonlocal failures
            try:
                detail = fn()
                print(f'  ok    {name}' + (f': {detail}' if detail else ''))
            except Exception as err:  # noqa: BLE001 - reported, counted
                failures += 1
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
                print(f'  FAIL  {name}: {type(err).__name__}: {first}')

        def resume_load():
            ckpt = safe_torch_load(resume)
            assert ckpt['meta']['dtype'] == np.float64 and ckpt['meta']['epoch'] == 3
            return ''

        def eval_only_load():
            # the same file read through --eval-only's allow-list, which holds a (class, 'name') entry
            ckpt = read_checkpoint(resume)
            assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
            return ''

        def names_disallowed():
            try:
                read_checkpoint(evil)
            except CheckpointError as err:
                if 'system' not in str(err):
                    raise AssertionError(f'refused without naming os.system: {str(err)[:120]}') from None
                return 'refused, naming os.system'
            raise AssertionError('a pickle that runs code was loaded')

        check('safe_globals (resume)', resume_load)
        check('(class, name) allow-list entries (--eval-only)', eval_only_load)
        check('get_unsafe_globals_in_checkpoint (refusal names the object)', names_disallowed)
    print('all checkpoint APIs present' if not failures else f'{failures} check(s) failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
