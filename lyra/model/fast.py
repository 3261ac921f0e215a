"""Fast paths of the Lyra model: the same tensors as the paper's computation, computed faster.

The layers in `lyra.model.lyra` and `lyra.model.s4d` follow the paper step by step and call into this
module at named points; with `disabled()` (or `ENABLED = False`) they run the plain computation instead,
which the tests compare against. What lives here (numbers in docs/benchmarks.md):

- the S4D kernel without the (H, N/2, L) Vandermonde tensor (`vandermonde`), its rfft cached per
  length while a layer is in eval mode (`kernel_rfft`), the forward and backward kernels of a
  bidirectional layer packed into one two-sided kernel (one FFT instead of two), and an FFT length
  of the form 2^k or 3 * 2^k instead of exactly 2L (`fft_size`);
- CPU inference without autograd in cache-sized pieces (`in_pieces`): slices of the batch, and along
  a long sequence windows for the PGC layers (`local_in_windows`), the S4D channels
  (`fft_conv_in_groups`) and the S4D output stage (`along_length`);
- float32 CPU inference through oneDNN's matmul (`Linear`), the depthwise convolution channels-last
  (`depthwise_conv`), and RMSNorm's weight multiplied in place at inference (`inference`).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

ENABLED = True  # False: every layer runs the plain paper computation

# CPU inference pieces: intermediates stay in cache and are reused by the allocator instead of being
# page-faulted in afresh (2-3x faster). Measured on this project's 2-core CPU: slices of 32,768
# positions (B * L) beat 8,192 by 25% at L = 56 and 10% at L = 237; windows of 8,192 positions are
# best at L = 65,536 (a sequence is windowed only when longer than 2 * WINDOW).
SLICE_POSITIONS = 32768
WINDOW = 8192

KERNEL_CACHE_LENGTHS = 8  # a few lengths (variable-length scoring), not unbounded


def enabled() -> bool:
    return ENABLED


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the plain paper computation inside the block."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


def inference() -> bool:
    """Fast paths on and no autograd: buffers may be reused in place."""
    return ENABLED and not torch.is_grad_enabled()


# ---- position-wise layers ----------------------------------------------------------------------------


def _onednn_linear_op():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


ONEDNN_LINEAR = _onednn_linear_op()  # None where torch is built without oneDNN


class Linear(nn.Linear):
    """nn.Linear that calls oneDNN's matmul directly for float32 inference on CPU.

    torch's CPU linear goes through MKL, which runs AVX2 code on AMD CPUs; oneDNN uses AVX-512 where the
    CPU has it (~2.3x faster on this project's AMD EPYC). Same parameters, same product.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (inference() and ONEDNN_LINEAR is not None and x.device.type == "cpu"
                and x.dtype == self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            return ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def depthwise_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """conv(x) for x (B, L, e) in that layout -> (B, L, e): the depthwise 'same' convolution.

    Viewed as a (B, e, 1, L) image in channels-last memory, oneDNN/cuDNN convolve without the two
    transposed copies that Conv1d on (B, e, L) needs (~8x faster on CPU).
    """
    x4 = x.unsqueeze(1).permute(0, 3, 1, 2)  # (B, e, 1, L), channels-last strides
    y = F.conv2d(x4, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups)
    return y.permute(0, 2, 3, 1).squeeze(1)  # (B, L, e)


# ---- the S4D convolution -----------------------------------------------------------------------------


def fft_size(n: int) -> int:
    """Smallest 2^k or 3 * 2^k >= n: FFT lengths that pocketfft and cuFFT transform fastest."""
    p2 = 1 << max(1, (n - 1).bit_length())
    return 3 * p2 // 4 if 3 * p2 // 4 >= n and p2 >= 4 else p2


def vandermonde(C: torch.Tensor, dtA: torch.Tensor, L: int, chunk: int | None = None) -> torch.Tensor:
    """K[h, l] = 2 Re sum_n C[h, n] exp(dtA[h, n] l) for l < L: (H, L) float32, from C, dtA (H, N/2) complex128.

    Powers z^l (z = exp(dtA)), l = c*T + t, factor as z^(cT) * z^t, so the (H, N/2, L) tensor is never
    built: two small tables in float64 (exact exponentials), then one real batched matmul in float32.
    `chunk` is T, the steps per chunk (None: about sqrt(L)).
    """
    T = chunk or max(1, math.isqrt(L - 1) + 1)  # steps per chunk
    n_chunks = -(-L // T)
    t = torch.arange(T, device=dtA.device, dtype=torch.float64)
    c = torch.arange(n_chunks, device=dtA.device, dtype=torch.float64) * T
    z_t = torch.exp(dtA.unsqueeze(-1) * t)  # (H, N/2, T)          z^t
    w_c = C.unsqueeze(-1) * torch.exp(dtA.unsqueeze(-1) * c)  # (H, N/2, n_chunks)   C z^(cT)
    # 2 Re(w z) = 2 (w.re z.re - w.im z.im), summed over n: a real matmul over 2 * N/2 rows
    w = torch.cat([w_c.real, -w_c.imag], dim=1).float()  # (H, N, n_chunks)
    z = torch.cat([z_t.real, z_t.imag], dim=1).float()  # (H, N, T)
    K = 2 * torch.bmm(w.transpose(1, 2), z)  # (H, n_chunks, T)
    return K.reshape(K.shape[0], -1)[:, :L]  # (H, L)


class _KernelCache:
    """rfft of one S4D layer's kernel per (L, n), valid while its kernel parameters are unchanged."""

    def __init__(self) -> None:
        self.version: tuple = ()
        self.K_f: dict[tuple[int, int], torch.Tensor] = {}


_KERNEL_CACHES: "weakref.WeakKeyDictionary[nn.Module, _KernelCache]" = weakref.WeakKeyDictionary()


def kernel_cache(layer: nn.Module) -> dict[tuple[int, int], torch.Tensor]:
    """The cached kernel rffts of an S4D layer, by (L, n) (empty when none)."""
    cache = _KERNEL_CACHES.get(layer)
    return cache.K_f if cache is not None else {}


def _param_version(kernel: nn.Module) -> tuple:
    """Changes whenever a kernel parameter is updated in place (optimiser step, load_state_dict) or moved."""
    params = (kernel.log_dt, kernel.C, kernel.log_A_real, kernel.A_imag)
    return tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in params)


def kernel_rfft(layer: nn.Module, L: int, n: int) -> torch.Tensor:
    """rfft at FFT size n >= 2L of the S4D layer's kernel: (H, n//2 + 1) complex64. Cached in eval mode.

    A bidirectional layer's forward and backward kernels become one two-sided kernel: lag j >= 0 at
    index j, lag -j at index n - j, lag 0 gets both. The FFT is >= 2L long, so neither side wraps around.
    """
    use_cache = not layer.training and not torch.is_grad_enabled()
    if layer.training:
        _KERNEL_CACHES.pop(layer, None)  # the parameters are about to change: free the memory
    if use_cache:
        cache = _KERNEL_CACHES.setdefault(layer, _KernelCache())
        version = _param_version(layer.kernel)
        if version != cache.version:
            cache.K_f.clear()
            cache.version = version
        if (L, n) in cache.K_f:
            return cache.K_f[L, n]
    K = layer.kernel(L)  # (H, L), or (2H, L) bidirectional
    if layer.bidirectional:
        H = layer.d_model
        K_fwd, K_bwd = K[:H], K[H:]  # (H, L) each
        k = F.pad(K_fwd, (0, n - L)) + F.pad(K_bwd[:, 1:].flip(-1), (n - L + 1, 0))  # (H, n)
        k[:, 0] = k[:, 0] + K_bwd[:, 0]
        K_f = torch.fft.rfft(k, n=n)  # (H, n//2+1)
    else:
        K_f = torch.fft.rfft(K, n=n)  # (H, n//2+1)
    if use_cache:
        if len(cache.K_f) >= KERNEL_CACHE_LENGTHS:
            cache.K_f.pop(next(iter(cache.K_f)))
        cache.K_f[L, n] = K_f
    return K_f


def fft_conv(u: torch.Tensor, K_f: torch.Tensor, n: int) -> torch.Tensor:
    """Linear convolution of u (B, H, L) with the kernels whose rfft at size n >= 2L is K_f (H, n//2+1)."""
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * K_f, n=n)[..., : u.shape[-1]]  # (B, H, L)


def ssm_conv(layer: nn.Module, u: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """The S4D layer's convolution K * u (both directions if bidirectional): (B, H, L) -> (B, H, L).

    `window` (long L, no autograd): transform groups of about window * H elements at a time.
    """
    B, H, L = u.shape
    n = fft_size(2 * L)
    K_f = kernel_rfft(layer, L, n)  # (H, n//2+1)
    g = H if window is None or L <= 2 * window else max(1, window * H // n)  # channels per group
    if g >= H:
        return fft_conv(u, K_f, n)  # (B, H, L)
    return torch.cat([fft_conv(u[:, h: h + g], K_f[h: h + g], n) for h in range(0, H, g)], dim=1)  # (B, H, L)


# ---- CPU inference in pieces -------------------------------------------------------------------------


def cpu_inference(u: torch.Tensor) -> bool:
    """CPU inference without autograd: the model runs `in_pieces`."""
    return inference() and u.device.type == "cpu"


def in_pieces(run: Callable[..., torch.Tensor], u: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """run(u, mask, window) over slices of the batch: the same output as run(u, mask) on the whole batch.

    `window` is WINDOW for a sequence longer than 2 * WINDOW (the layers then work along it in
    windows), otherwise None.
    """
    B, L = u.shape[:2]
    window = WINDOW if L > 2 * WINDOW else None  # positions per window
    step = max(1, SLICE_POSITIONS // max(L, 1))  # sequences per slice
    if B <= step:
        return run(u, mask, window)
    masks = mask.split(step) if mask is not None else [None] * -(-B // step)
    return torch.cat([run(us, ms, window) for us, ms in zip(u.split(step), masks)])


def local_in_windows(local: Callable[..., torch.Tensor], u: torch.Tensor, mask: torch.Tensor | None,
                     window: int, halo: int) -> torch.Tensor:
    """local(u, mask) (B, L, H) for position-local layers, computed in windows along L.

    A layer stack that sees `halo` neighbours per side gives exact outputs for the inner `window`
    positions of a window padded by `halo` positions on each side.
    """
    L = u.shape[1]
    if L <= 2 * window:
        return local(u, mask)
    pieces = []
    for start in range(0, L, window):
        lo, hi = max(0, start - halo), min(L, start + window + halo)
        x = local(u[:, lo:hi], None if mask is None else mask[:, lo:hi])  # (B, hi - lo, H)
        pieces.append(x[:, start - lo: start - lo + window])
    return torch.cat(pieces, dim=1)  # (B, L, H)


def along_length(f: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, window: int | None) -> torch.Tensor:
    """f(y) for a position-wise f: (B, H, L) -> (B, L, H), in windows of `window` positions along a long L."""
    L = y.shape[-1]
    if window is None or L <= 2 * window:
        return f(y)
    return torch.cat([f(y[..., s: s + window]) for s in range(0, L, window)], dim=1)  # (B, L, H)
