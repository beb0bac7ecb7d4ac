"""DiTASK: multi-task fine-tuning by diffeomorphic warps of the frozen weights' singular values.

Mantri et al. "DiTASK: Multi-Task Fine-Tuning with Diffeomorphic Transformations", CVPR 2025,
arXiv 2502.06029. Facts from the release ipsitmantri/DiTASK @ 7541c55 (``models/lora.py``
``DiTASKLinear``, ``configs/ditask/ditask_tiny_448_r64.yaml``, ``config.py``, ``main.py``) and,
for the Swin file missing there, the fork Malygossssss/DiTASK @ 1ef40ae
(``models/swin_transformer_ditask.py``). The CPA library of the release is ``difw`` 0.0.31
(``Cpab(tess_size, backend='pytorch', zero_boundary=True)``, default ``basis='rref'``).
This is an independent implementation on mtlbench's stream-major Swin; the CPA integration
below is written from the maths (closed form, cell by cell) in plain torch and needs no
compiled extension. ``difw`` serves only as a test oracle.

What a DiTASK linear computes (:class:`DiTASKLinear`):

* The frozen weight is factored once, ``W = U diag(S) V^T`` (for ``qkv`` the q, k and v blocks
  separately, one shared warp for the three). The factors are cached and recomputed only when
  the base weight changes (load, device or dtype move).
* A 1-D CPA diffeomorphism ``phi_theta`` of ``[0, 1]`` (:func:`cpa_integrate`): ``N_P`` equal
  cells, continuous piecewise-affine velocity, zero velocity at 0 and 1, ``theta`` of dimension
  ``N_P - 1`` in difw's basis (:func:`cpa_cell_basis`), integrated for unit time.
* ``S'[j] = S`` linearly interpolated at ``(p - 1) * phi_theta(j / (p - 1))``, ``p = len(S)``
  (:func:`cpa_warp_sequence`), and ``W' = U diag(S') V^T`` **replaces** ``W``: the output is
  ``W' dropout(x) + b`` (the frozen ``W x`` is not added).
* Shared ``theta`` (``N_P = num_cells``, 64 in the release) on qkv, proj, fc1, fc2 of all
  blocks. In the last block of each stage, proj / fc1 / fc2 also carry one ``theta_t`` per task
  (``N_P = task_num_cells``, 4 in the release) that warps the *original* spectrum ``S``; the
  task stream is ``W'_t x_t + b``. Where the layer receives only the shared stream (proj, since
  attention runs once on the shared stream) the task inputs are the dropped-out shared input.
* Trainable besides ``theta``: patch embedding, LayerNorms, relative-position tables and the
  PatchMerging reductions in full (the release's ``mark_only_lora_as_trainable``).

Counts on PASCAL's four tasks, Swin-T 448 (``tests/test_method_ditask.py``): ``theta``
3,168 (shared 48 x 63 = 3,024, task 4 stages x 3 linears x 4 tasks x 3 = 144); encoder
trainable 1,602,714; with the decoders (1,946,624) 3,549,338. The release builds 3,312
``theta``: it also gives every ``qkv`` (all 12 blocks) per-task ``theta`` whose outputs its
attention discards (``qkv, _ = self.qkv(x)``), 144 parameters that never receive a gradient
(the release trains with ``find_unused_parameters=True``, as mtlbench's DDP does when they are
built). ``inert_qkv_task_theta=True`` reproduces them, and the count 3,312 / 1,602,858 / 3,549,482. The paper prints 1.60M
(single-task) / 1.61M (MTL) encoder-only; both builds round to 1.60M.

Not in paper: how theta is parametrised and normalised; chosen: difw's zero-boundary 'rref'
  basis with each column scaled to unit max-abs (a, b) coefficient, as the release uses, so
  the same theta gives the same warp (column k: velocity rising linearly from 0 at x = 0 to
  1 / N_P at vertex k, then falling to 0 at vertex k + 1).
Not in paper: theta init; chosen: the release's kaiming-uniform (a = sqrt 5) on the ``[1, d]``
  parameter, i.e. U(-1/sqrt(d), 1/sqrt(d)); the warp is *not* the identity at the start.
  Option ``init='identity'`` (theta = 0, W' = W up to SVD round-off).
Not in paper: per-task theta on qkv; chosen: none that act (the release's are inert); option
  ``inert_qkv_task_theta`` for count parity with the release.
Not in paper: dropout on task inputs that arrive as their own streams (fc1 / fc2); chosen:
  none, as the release (it drops the shared input, which task streams inherit only where they
  are forked from it, i.e. at proj); option ``task_dropout``.
Not in paper: numerics of the integration and interpolation; chosen: closed-form per-cell
  flow in float64 (velocities below 1e-12 count as zero, difw uses float32 and 1.2e-7), the
  sample position written as ``j + (p-1)(phi(x_j) - x_j)``, then ``S'`` back in float32. difw's
  float32 ``linspace`` grid makes its identity warp inexact by ~1e-5 of an index; here
  theta = 0 gives ``S' = S`` exactly, and a nonzero gradient (a fixed point keeps the
  first-order term ``t v(x)``). Agreement with difw's pure-PyTorch closed form: ~1e-6 in phi,
  ~1e-5 relative in the theta gradient. (difw's JIT-compiled CPU kernel, built with
  -ffast-math, returns non-monotone grids with gcc 13 / torch 2.14; its CUDA kernel, which
  the release ran, and its pure-PyTorch path implement the same closed form.)
Not in paper: SVD precision; chosen: float32 as the release (``torch.svd`` of the float32
  weight), so W' = W up to ~1e-6 relative at theta = 0; float64 for a float64 weight. On CPU
  the factorisation runs single-threaded (MKL's threaded SVD of Swin-T's linears took 43 s of
  CPU instead of 3.6 s on a busy 2-core machine).
Not in paper: singular-vector cache; chosen: plain tensors on the layer, not registered
  buffers: they are never saved (state dicts stay W-free), not broadcast by DDP every step
  (~2x the frozen linears' size), and are computed at the first forward (building stays
  cheap) and again whenever ``base_layer.weight``'s version, storage, device or dtype
  changes (``load_state_dict``, ``.to()``). Edits through ``weight.data`` bypass version
  tracking: call :meth:`DiTASKLinear.refresh` after such an edit.
Not in paper: recomputing W'; chosen: once per forward in training (one GEMM of the layer's
  size per theta); in eval under ``no_grad`` W' is cached and rebuilt only when theta (by
  version) or the factors change; :meth:`~torch.nn.Module.train` drops the cache.
Not in paper: autocast; chosen: the warp and W' are computed in float32/float64 with autocast
  off, the layer's matmul then follows autocast (the release rebuilds W' under fp16 autocast).
Not in paper (release behaviour kept): theta is stored 2-D (``[1, d]`` shared, ``[T, d]`` per
  task) as in the release, so a "no decay on 1-D params" rule still decays it, as the release
  does.
Not possible: ``merge()``: W' replaces W, and folding it into ``base_layer.weight`` would change
  the factors the warp starts from; the eval cache gives the same inference cost instead.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.layers.dropout import adapter_dropout
from mtlbench.method import AdapterLayer, Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['cpa_cell_basis', 'cpa_vertex_basis', 'cpa_vertex_velocity', 'cpa_integrate', 'cpa_warp_sequence',
           'cpa_warp_positions', 'interpolate_sequence', 'BatchedWarps',
           'DiTASKLinear', 'DiTASKConfig', 'DiTASK']

# ---------------------------------------------------------------------------------------------
# 1-D continuous piecewise-affine (CPA) diffeomorphisms of [0, 1] (mtlbench-independent)
# ---------------------------------------------------------------------------------------------

_BIG = 1e6          # "never": a travel time larger than any integration time in use
_VEL_EPS = 1e-12    # |velocity| below this counts as zero (a fixed point)
_basis_cache: Dict[Tuple[int, str, torch.device], torch.Tensor] = {}


def cpa_cell_basis(num_cells: int) -> torch.Tensor:
    """difw's zero-boundary 'rref' basis of CPA velocity fields on ``[0, 1]``.

    The velocity in cell ``c`` (``[c/N, (c+1)/N]``, ``N = num_cells``) is ``a_c x + b_c``;
    ``A = B @ theta`` stacks ``(a_0, b_0, a_1, b_1, ...)``. Column ``k - 1`` (``k = 1..N-1``) has
    slope ``1/N`` on cells ``0..k-1``, slope ``-k/N`` and offset ``k(k+1)/N^2`` on cell ``k``, zero
    after (a field that is continuous and vanishes at 0 and 1), divided by its largest absolute
    coefficient.

    Args:
        num_cells: ``N >= 2``.

    Returns:
        ``[2N, N-1]`` float64.
    """
    if num_cells < 2:
        raise ValueError(f'a zero-boundary CPA field needs at least 2 cells, got {num_cells}')
    n, s = num_cells, 1.0 / num_cells
    basis = torch.zeros(2 * n, n - 1, dtype=torch.float64)
    for k in range(1, n):
        col = torch.zeros(2 * n, dtype=torch.float64)
        col[0:2 * k:2] = s
        col[2 * k] = -k * s
        col[2 * k + 1] = k * (k + 1) * s * s
        basis[:, k - 1] = col / col.abs().max()
    return basis


def cpa_vertex_basis(num_cells: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Velocities of the basis fields at the ``N + 1`` vertices ``j / N`` (cached per device).

    Args:
        num_cells: ``N``.
        device: where the returned tensor lives.

    Returns:
        ``[N + 1, N - 1]`` float64; rows 0 and ``N`` are exactly zero.
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    key = (num_cells, 'vertex', device)
    if key not in _basis_cache:
        cells = cpa_cell_basis(num_cells).view(num_cells, 2, num_cells - 1)
        x = torch.arange(num_cells, dtype=torch.float64) / num_cells       # left vertex of each cell
        vert = torch.zeros(num_cells + 1, num_cells - 1, dtype=torch.float64)
        vert[:num_cells] = cells[:, 0] * x[:, None] + cells[:, 1]           # v at x_c from cell c
        vert[0] = 0.0                                                       # exact zero boundary
        _basis_cache[key] = vert.to(device)
    return _basis_cache[key]


def cpa_vertex_velocity(theta: torch.Tensor) -> torch.Tensor:
    """Vertex velocities of the field ``theta`` parametrises.

    Args:
        theta: ``[n, N - 1]`` (any float dtype).

    Returns:
        ``[n, N + 1]`` float64, zero at both ends.
    """
    basis = cpa_vertex_basis(theta.shape[-1] + 1, theta.device)
    return theta.to(torch.float64) @ basis.t()


def _log1p_ratio(z: torch.Tensor) -> torch.Tensor:
    """``log(1 + z) / z`` (1 at ``z = 0``), smooth and finite for ``z > -1``."""
    small = z.abs() < 1e-4
    zs = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - z / 2 + z * z / 3, torch.log1p(zs) / zs)


def _expm1_ratio(z: torch.Tensor) -> torch.Tensor:
    """``(exp(z) - 1) / z`` (1 at ``z = 0``)."""
    small = z.abs() < 1e-4
    zs = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(zs) / zs)


def _travel_time(v0: torch.Tensor, v1: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Time to move right by ``dx >= 0`` inside one cell, from velocity ``v0`` to ``v1``.

    With ``v = a x + b`` the time is ``log(v1 / v0) / a = dx / v0 * log(1 + z) / z``,
    ``z = (v1 - v0) / v0``; it is finite only if both velocities are positive. Invalid
    entries get :data:`_BIG`, computed from safe stand-ins so that no gradient is NaN.
    """
    valid = (v0 > _VEL_EPS) & (v1 > _VEL_EPS)
    v0s = torch.where(valid, v0, torch.ones_like(v0))
    v1s = torch.where(valid, v1, torch.ones_like(v1))
    tau = dx / v0s * _log1p_ratio((v1s - v0s) / v0s)
    return torch.where(valid, tau, torch.full_like(tau, _BIG))


def _flow_right(x: torch.Tensor, vel: torch.Tensor, time: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Closed-form flow of points whose velocity is positive (others: in-cell flow only).

    A point in cell ``c`` first reaches vertex ``c + 1`` (time ``t0``), then crosses whole
    cells (times ``tau_k``) while the velocity stays positive; the last vertex reached within
    ``time`` starts the final in-cell flow ``x0 + v0 r (e^{a r} - 1) / (a r)``.

    Args:
        x: ``[n, P]`` in ``[0, 1]``.
        vel: ``[n, N + 1]`` vertex velocities (float64).
        time: integration time ``> 0``.

    Returns:
        ``(psi [n, P], v [n, P])``: end points and the start velocities.
    """
    n_cells = vel.shape[-1] - 1
    h = 1.0 / n_cells
    c = (x * n_cells).floor().clamp(0, n_cells - 1).long()
    slope = (vel[:, 1:] - vel[:, :-1]) * n_cells                              # [n, N]
    v_left, v_right, a_c = vel.gather(1, c), vel.gather(1, c + 1), slope.gather(1, c)
    x_left = c.to(x.dtype) * h
    v = v_left + a_c * (x - x_left)
    t0 = _travel_time(v, v_right, x_left + h - x)                            # to vertex c + 1
    tau = _travel_time(vel[:, :-1], vel[:, 1:], torch.full_like(slope, h))   # across cell k
    k = torch.arange(n_cells, device=x.device)
    after = k.view(1, 1, -1) > c.unsqueeze(-1)                               # cells c+1 .. N-1
    steps = torch.where(after, tau.unsqueeze(1), torch.zeros((), dtype=tau.dtype, device=tau.device))
    arrive = t0.unsqueeze(-1) + steps.cumsum(-1)       # [n, P, N]: [.., k] = arrival at vertex k+1
    reached = (arrive <= time) & (k.view(1, 1, -1) >= c.unsqueeze(-1))
    count = reached.sum(-1)
    moved = count > 0
    m = c + count                                       # last vertex reached (<= N - 1)
    t_m = arrive.gather(2, (m - 1).clamp(0, n_cells - 1).unsqueeze(-1)).squeeze(-1)
    m_cell = m.clamp(max=n_cells - 1)
    x0 = torch.where(moved, m.to(x.dtype) * h, x)
    v0 = torch.where(moved, vel.gather(1, m_cell), v)
    a0 = torch.where(moved, slope.gather(1, m_cell), a_c)
    rest = torch.where(moved, time - t_m, torch.full_like(t_m, time))
    return x0 + v0 * rest * _expm1_ratio(a0 * rest), v


def cpa_integrate(x: torch.Tensor, theta: torch.Tensor, time: float = 1.0) -> torch.Tensor:
    """``phi_theta(x)``: integrate the CPA velocity field for ``time``, differentiable in theta.

    The field is continuous and vanishes at 0 and 1, so the flow maps ``[0, 1]`` onto itself,
    increasingly, fixing both ends. Points moving left are handled by reflection
    (``x -> 1 - x``, ``v -> -v``), so only rightward motion is integrated.

    Args:
        x: ``[P]`` (shared by all thetas) or ``[n, P]`` points in ``[0, 1]``.
        theta: ``[n, N - 1]``.
        time: integration time (1 in DiTASK).

    Returns:
        ``[n, P]`` float64.
    """
    vel = cpa_vertex_velocity(theta)
    n = theta.shape[0]
    x = x.to(torch.float64).expand(n, x.shape[-1])
    # one pass over both directions: rows n.. are the mirrored problem
    psi, v = _flow_right(torch.cat([x, 1 - x]), torch.cat([vel, -vel.flip(-1)]), time)
    right, left, v = psi[:n], psi[n:], v[:n]
    # v == 0: ``right`` is x + 0 * t * (e^{at}-1)/(at) = x in value, and carries the first-order
    # derivative in theta (a constant x here would leave theta = 0 without gradient)
    return torch.where(v < 0, 1 - left, right)


def cpa_warp_sequence(values: torch.Tensor, theta: torch.Tensor, time: float = 1.0) -> torch.Tensor:
    """Resample a sequence along ``phi_theta``: ``out[j] = values at (p-1) phi(j/(p-1))``.

    Linear interpolation between neighbours (difw's ``transform_data`` with
    ``outsize = p``).

    Args:
        values: ``[..., p]``.
        theta: ``[n, N - 1]``.
        time: integration time.

    Returns:
        ``[n, ..., p]`` float64.
    """
    p = values.shape[-1]
    if p == 1:
        return values.to(torch.float64).expand(theta.shape[0], *values.shape).clone()
    return interpolate_sequence(values, cpa_warp_positions(p, theta, time))


def cpa_warp_positions(p: int, theta: torch.Tensor, time: float = 1.0) -> torch.Tensor:
    """Sample positions ``(p-1) phi_theta(j/(p-1))``, ``j = 0..p-1``, for each row of ``theta``.

    Rows are independent, so the thetas of many layers with the same ``p`` go through one call
    (:class:`BatchedWarps`).

    Returns:
        ``[n, p]`` float64 in ``[0, p - 1]``.
    """
    index = torch.arange(p, dtype=torch.float64, device=theta.device)
    grid = index / (p - 1)
    # (p-1) phi(j/(p-1)), written as j + displacement so that theta = 0 gives exactly j
    return (index + (cpa_integrate(grid, theta, time) - grid) * (p - 1)).clamp(0, p - 1)     # [n, p]


def interpolate_sequence(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``values [..., p]`` linearly interpolated at ``pos [n, p]``: ``[n, ..., p]`` float64."""
    p = values.shape[-1]
    vals = values.to(torch.float64)
    i0 = pos.detach().floor().long().clamp(0, p - 1)
    i1 = (i0 + 1).clamp(max=p - 1)
    w = pos - i0.to(pos.dtype)
    lo = vals[..., i0].movedim(-2, 0)                                           # [n, ..., p]
    hi = vals[..., i1].movedim(-2, 0)
    w = w.view(w.shape[0], *([1] * (vals.ndim - 1)), p)
    return lo * (1 - w) + hi * w


# ---------------------------------------------------------------------------------------------
# The adapter layer
# ---------------------------------------------------------------------------------------------

def _tensor_key(t: torch.Tensor) -> tuple:
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no version counter
        version = -1
    return t.data_ptr(), version, t.dtype, t.device


@contextlib.contextmanager
def _single_threaded(enabled: bool) -> Iterator[None]:
    """Run CPU LAPACK single-threaded: MKL's threaded SVD of Swin-T's linears took 43 s of CPU
    (110 s wall) instead of 3.6 s on a busy 2-core machine."""
    prev = torch.get_num_threads()
    if not enabled or prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@torch.no_grad()
def _factorise(w: torch.Tensor, splits: int, in_features: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``w``'s ``splits`` row blocks: ``U [splits, out/splits, p]``, ``S [splits, p]``,
    ``Vh [splits, p, in]`` (float32, float64 for a float64 weight)."""
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    blocks = w.detach().to(dtype).reshape(splits, -1, in_features)
    if blocks.shape[-2] >= blocks.shape[-1]:
        u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
    else:  # LAPACK is faster on the tall orientation: W^T = V S U^T
        v, s, uh = torch.linalg.svd(blocks.transpose(-1, -2), full_matrices=False)
        u, vh = uh.transpose(-1, -2).contiguous(), v.transpose(-1, -2).contiguous()
    return u, s, vh


def _init_theta_(theta: torch.Tensor, init: str) -> None:
    with torch.no_grad():
        if init == 'identity':
            theta.zero_()
        else:  # the release: nn.init.kaiming_uniform_(theta [1, d], a=sqrt(5)) -> U(+-1/sqrt(d))
            nn.init.kaiming_uniform_(theta, a=math.sqrt(5))


def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    module.refresh()


class DiTASKLinear(AdapterLayer):
    """A frozen linear whose singular values are warped by a shared and per-task CPA theta.

    Args:
        base_layer: frozen ``nn.Linear`` (``[out, in]``).
        num_cells: shared ``N_P``; 0 = no shared warp (the shared stream uses ``W``).
        num_tasks: ``T`` per-task thetas (0 = none).
        task_num_cells: per-task ``N_P``.
        splits: row blocks factored separately (3 for ``qkv``: q, k, v; one theta for all).
        dropout: dropout on the shared input.
        init: ``'kaiming_uniform'`` (release) or ``'identity'``.
        time: integration time.
        task_outputs: ``False`` keeps per-task thetas that produce nothing (the release's
            ``qkv``; see ``inert_qkv_task_theta``).
        task_dropout: also drop out task inputs that arrive as their own streams.

    Shapes: input ``[S, ..., in]``. Without task outputs every stream gets ``W' x + b``. With
    them ``S in {1, 1 + T}`` and the output is ``[1 + T, ..., out]``: stream 0 ``W' x_0 + b``,
    stream ``1 + t`` ``W'_t x_t + b`` (``x_t = x_0`` when ``S == 1``).
    """
    adapter_param_names = ('ditask_theta', 'ditask_task_theta')

    def __init__(self, base_layer: nn.Linear, num_cells: int = 64, num_tasks: int = 0, task_num_cells: int = 4,
                 splits: int = 1, dropout: float = 0.05, init: str = 'kaiming_uniform', time: float = 1.0,
                 task_outputs: bool = True, task_dropout: bool = False) -> None:
        super().__init__(base_layer)
        if self.out_features % splits:
            raise ValueError(f'out_features {self.out_features} is not divisible into {splits} blocks')
        self.num_cells, self.num_tasks, self.task_num_cells = num_cells, num_tasks, task_num_cells
        self.splits, self.time, self.init = splits, float(time), init
        self.task_outputs, self.task_dropout = task_outputs, task_dropout
        self.dropout = adapter_dropout(dropout)
        if num_cells:
            self.ditask_theta = nn.Parameter(torch.empty(1, num_cells - 1))
            _init_theta_(self.ditask_theta, init)
        else:
            self.register_parameter('ditask_theta', None)
        if num_tasks:
            self.ditask_task_theta = nn.Parameter(torch.empty(num_tasks, task_num_cells - 1))
            _init_theta_(self.ditask_task_theta, init)
        else:
            self.register_parameter('ditask_task_theta', None)
        # Caches (plain tensors: not saved, not broadcast; see the module docstring).
        self._svd: Optional[Tuple[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
        self._wcache: Dict[str, Tuple[tuple, torch.Tensor]] = {}
        self._warp_pos: Dict[str, torch.Tensor] = {}   # filled by BatchedWarps for one forward
        # A compiled forward cannot see the weight's storage or version: drop the caches
        # wherever the weight is replaced.
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _apply(self, fn, *args, **kwargs):
        self.refresh()   # .to() / .cuda() / .half(): new storage
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ factors
    def refresh(self) -> None:
        """Forget the cached factors and warped weights (after editing ``weight.data``)."""
        self._svd = None
        self._wcache = {}

    def factors(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached SVD of the frozen weight per row block.

        Returns:
            ``U [splits, out/splits, p]``, ``S [splits, p]`` (descending), ``Vh [splits, p, in]``,
            float32 as in the release (float64 for a float64 weight), on the weight's device.
        """
        w = self.base_layer.weight
        if torch.compiler.is_compiling():
            # Storage pointers and version counters cannot be traced: a compiled forward trusts
            # the cache, which BatchedWarps.refresh_factors (an eager backbone pre-hook) keeps
            # fresh; a layer compiled on its own factorises in its graph once.
            if self._svd is None:
                self._svd = (None, _factorise(w, self.splits, self.in_features))
            return self._svd[1]
        key = _tensor_key(w)
        stale = self._svd is not None and self._svd[1][0].is_inference() and not torch.is_inference_mode_enabled()
        if self._svd is None or self._svd[0] != key or stale:
            with _single_threaded(w.device.type == 'cpu'):
                self._svd = (key, _factorise(w, self.splits, self.in_features))
            self._wcache = {}
        return self._svd[1]

    def _compose(self, theta: torch.Tensor, name: str = '') -> torch.Tensor:
        """``U diag(warp_theta(S)) V^T`` for each row of theta: ``[n, out, in]`` (weight dtype).

        The warp positions come from :class:`BatchedWarps` when the backbone's forward computed
        them for all layers at once (``name``: ``'shared'`` / ``'task'``), else from this layer.
        """
        u, s, vh = self.factors()
        with torch.autocast(device_type=u.device.type, enabled=False):
            pos = self._warp_pos.pop(name, None)
            if s.shape[-1] == 1 or pos is None:
                s_warped = cpa_warp_sequence(s, theta, self.time)
            else:
                s_warped = interpolate_sequence(s, pos)
            s_warped = s_warped.to(u.dtype)                                          # [n, splits, p]
            w = torch.matmul(u.unsqueeze(0) * s_warped.unsqueeze(-2), vh.unsqueeze(0))
        return w.reshape(theta.shape[0], self.out_features, self.in_features).to(self.weight.dtype)

    def _cached(self, name: str, theta: torch.Tensor) -> torch.Tensor:
        """W' for ``theta``: fresh when training or under autograd, else cached until theta or W change."""
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            w = self._compose(theta, name)
            return w[0] if name == 'shared' else w
        self.factors()
        key = (_tensor_key(theta), self._svd[0])
        hit = self._wcache.get(name)
        if hit is None or hit[0] != key or (hit[1].is_inference() and not torch.is_inference_mode_enabled()):
            w = self._compose(theta)
            hit = (key, w[0] if name == 'shared' else w)
            self._wcache[name] = hit
        return hit[1]

    def warped_weight(self) -> torch.Tensor:
        """Weight of the shared stream, ``[out, in]`` (``W`` itself without a shared warp)."""
        if self.ditask_theta is None:
            return self.weight
        return self._cached('shared', self.ditask_theta)

    def task_weights(self) -> torch.Tensor:
        """Per-task weights ``W'_t = U diag(warp_{theta_t}(S)) V^T``, ``[T, out, in]``."""
        if self.ditask_task_theta is None:
            raise RuntimeError('this layer has no per-task theta')
        return self._cached('task', self.ditask_task_theta)

    def train(self, mode: bool = True) -> 'DiTASKLinear':
        self._wcache = {}
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.num_tasks and self.task_outputs):
            return F.linear(self.dropout(x), self.warped_weight(), self.bias)
        T = self.num_tasks
        if x.shape[0] not in (1, 1 + T):
            raise ValueError(f'expected 1 or {1 + T} streams, got {x.shape[0]}')
        shared_in = self.dropout(x[:1])
        shared_out = F.linear(shared_in, self.warped_weight(), self.bias)
        w_tasks = self.task_weights()                                     # [T, out, in]
        lead = x.shape[1:-1]
        if x.shape[0] == 1:   # every task reads the (dropped-out) shared input: one GEMM
            bias = None if self.bias is None else self.bias.repeat(T)
            y = F.linear(shared_in, w_tasks.reshape(T * self.out_features, self.in_features), bias)
            task_out = y.reshape(*lead, T, self.out_features).movedim(-2, 0)
        else:
            task_in = x[1:]
            if self.task_dropout:
                task_in = self.dropout(task_in)
            flat = task_in.reshape(T, -1, self.in_features)
            y = torch.bmm(flat, w_tasks.transpose(1, 2).to(flat.dtype))
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
            task_out = y.reshape(T, *lead, self.out_features)
        return torch.cat([shared_out, task_out.to(shared_out.dtype)], dim=0)

    def extra_repr(self) -> str:
        return (f'num_cells={self.num_cells}, num_tasks={self.num_tasks}, task_num_cells={self.task_num_cells}, '
                f'splits={self.splits}, task_outputs={self.task_outputs}')


class BatchedWarps:
    """Backbone forward hooks that integrate the CPA flows of all DiTASK layers in one call per
    group of layers sharing ``(N_P, p, time)`` (per Swin stage: the shared thetas of every block,
    and the task thetas of its last block), instead of ~60 small float64 operators per layer:
    a Swin-T step otherwise issues tens of thousands of kernels. Rows are independent, so every
    layer gets the positions its own call would compute (up to float64 round-off); the layers
    then interpolate their own spectra. The positions live for one forward: the post-hook drops
    the ones a layer did not use.

    Where each part runs (so that ``--compile`` gives one backbone graph that never recompiles):
    :meth:`refresh_factors` is a backbone pre-hook kept out of the compiler: it (re)factorises the
    frozen weights whose storage or version changed, which only eager code can see, so a
    compiled forward always finds fresh factors. :meth:`before` is a pre-hook of the patch
    embedding, the backbone's first module, so the compiler traces it inside the backbone's
    graph (a backbone hook would be a graph of its own, whose outputs cross into the next one).
    """

    def __init__(self, layers: List[DiTASKLinear]) -> None:
        self.layers = layers

    @torch.compiler.disable
    def refresh_factors(self, module: nn.Module, args) -> None:
        for layer in self.layers:
            layer._warp_pos = {}
            if layer.ditask_theta is not None or layer.ditask_task_theta is not None:
                layer.factors()

    def before(self, module: nn.Module, args) -> None:
        if not (module.training or torch.is_grad_enabled() or torch.compiler.is_compiling()):
            return   # evaluation: the layers serve cached weights
        groups: Dict[tuple, list] = {}
        for layer in self.layers:
            members = [('shared', layer.ditask_theta)]
            if layer.task_outputs:
                members.append(('task', layer.ditask_task_theta))
            for name, theta in members:
                if theta is None:
                    continue
                p = layer.factors()[1].shape[-1]
                if p > 1:
                    groups.setdefault((theta.shape[-1], p, layer.time, theta.device), []).append((layer, name, theta))
        for (_, p, time, _), members in groups.items():
            thetas = [theta for _, _, theta in members]
            pos = cpa_warp_positions(p, torch.cat(thetas) if len(thetas) > 1 else thetas[0], time)
            for (layer, name, _), part in zip(members, pos.split([t.shape[0] for t in thetas])):
                layer._warp_pos[name] = part

    @torch.compiler.disable
    def after(self, module: nn.Module, args, output) -> None:
        for layer in self.layers:
            if layer._warp_pos:
                layer._warp_pos = {}


# ---------------------------------------------------------------------------------------------
# Config and method
# ---------------------------------------------------------------------------------------------

_KINDS = ('qkv', 'proj', 'fc1', 'fc2')


@dataclass
class DiTASKConfig(MethodConfig):
    """DiTASK options (defaults: the release's ``ditask_tiny_448_r64``; see the module docstring)."""
    num_cells: int = field(default=64, metadata={'help': 'shared CPA cells N_P (theta has N_P - 1 entries)'})
    task_num_cells: int = field(default=4, metadata={'help': 'per-task CPA cells N_P in the last blocks'})
    kinds: tuple = field(default=_KINDS, metadata={'help': 'linears with a shared warp (all blocks)'})
    task_kinds: tuple = field(default=('proj', 'fc1', 'fc2'),
                              metadata={'help': 'linears with per-task warps (last block of each stage)'})
    dropout: float = field(default=0.05, metadata={'help': 'dropout on the shared input of every DiTASK linear'})
    task_dropout: bool = field(default=False, metadata={'help': 'also drop out task inputs given as own streams'})
    init: str = field(default='kaiming_uniform', metadata={'help': "'kaiming_uniform' (release) or 'identity'"})
    integration_time: float = field(default=1.0, metadata={'help': 'integration time of the CPA flow'})
    split_qkv: bool = field(default=True, metadata={'help': 'factor q, k, v of qkv separately (release)'})
    inert_qkv_task_theta: bool = field(
        default=False, metadata={'help': "add the release's per-task theta on every qkv, which its attention "
                                         "discards (never trained; count parity 3,312)"})

    def __post_init__(self) -> None:
        self.kinds, self.task_kinds = tuple(self.kinds), tuple(self.task_kinds)
        if self.num_cells < 2 or self.task_num_cells < 2:
            raise ValueError(f'num_cells and task_num_cells must be >= 2, got {self.num_cells}, {self.task_num_cells}')
        bad = set(self.kinds) - set(_KINDS)
        if bad or not set(self.task_kinds) <= {'proj', 'fc1', 'fc2'}:
            raise ValueError(f'invalid kinds {sorted(bad)} / task_kinds {self.task_kinds} '
                             f'(kinds within {_KINDS}; task kinds within proj/fc1/fc2)')
        if not self.kinds and not self.task_kinds:
            raise ValueError('DiTASK needs at least one of kinds / task_kinds')
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'dropout must be in [0, 1), got {self.dropout}')
        if self.init not in ('kaiming_uniform', 'identity'):
            raise ValueError(f"init must be 'kaiming_uniform' or 'identity', got {self.init!r}")
        if not self.integration_time > 0:
            raise ValueError(f'integration_time must be positive, got {self.integration_time}')


@METHODS.register_module('ditask')
class DiTASK(Method):
    """Shared and per-task diffeomorphic warps of the frozen linears' singular values."""
    config_cls = DiTASKConfig

    def variant(self) -> str:
        c = self.config
        return f'cells={c.num_cells}/{c.task_num_cells}'

    def ddp_find_unused_parameters(self) -> bool:
        """The release's inert qkv task thetas never get a gradient; it trains with
        ``find_unused_parameters=True``, and so does mtlbench when they are built."""
        return self.config.inert_qkv_task_theta

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        T = len(self.tasks)
        done = []
        for site in backbone.sites():
            if site.kind == 'reduction':
                continue
            task = site.task_block and site.kind in c.task_kinds
            shared = site.kind in c.kinds
            inert = c.inert_qkv_task_theta and site.kind == 'qkv'
            if not (task or shared or inert):
                continue
            base = backbone.get_submodule(site.name)
            layer = DiTASKLinear(
                base, num_cells=c.num_cells if shared else 0, num_tasks=T if (task or inert) else 0,
                task_num_cells=c.task_num_cells, splits=3 if (site.kind == 'qkv' and c.split_qkv) else 1,
                dropout=c.dropout, init=c.init, time=c.integration_time, task_outputs=task,
                task_dropout=c.task_dropout)
            backbone.replace_site(site.name, layer)
            done.append(site.name)
        if not done:
            raise ValueError('ditask matched no backbone site')
        warps = BatchedWarps([backbone.get_submodule(name) for name in done])
        backbone.register_forward_pre_hook(warps.refresh_factors)
        backbone.patch_embed.register_forward_pre_hook(warps.before)
        backbone.register_forward_hook(warps.after)
        return done
