"""Lyra: projected gated convolutions (PGC) followed by a diagonal state-space layer (S4D).

Follows the authors' architecture (see /work/shared/lyra-notes.md section 2):

    x = Linear(d_input -> d_model)(u)                 # encoder
    x = PGC(0.25)(x); x = PGC(2.0)(x)                 # no residual around the PGCs
    x = x + Dropout(S4D(RMSNorm(x)))                  # pre-norm residual, n_s4d times
    y = Linear(d_model -> d_output)(pool(x))          # masked mean/max/first pool, or per token
    y = y + beta * (sum_l u_l . S_l - mu) / sigma      # optional evolutionary prior (lyra/prior.py)

and goes further where the issue asks: padding masks, any number of PGC/S4D layers, a bidirectional
S4D, other pooling, a token-level head, an optimiser helper that gives the SSM parameters their own
learning rate, and a kernel generator that is fast and memory-light at long L.

Layout: the model runs in (B, L, C) so the linear layers are plain GEMMs; the S4D convolution runs
in (B, H, L) so the FFT is along the last (contiguous) axis.

Speed (numbers in docs/benchmarks.md): the S4D kernel is built without the (H, N/2, L) Vandermonde
tensor and cached per length in eval mode; the FFT is a fast length >= 2L; CPU inference without
autograd runs in cache-sized pieces; float32 CPU inference calls oneDNN's matmul directly; the
depthwise convolution runs channels-last; RMSNorm is one reduction and two multiplies. Under CUDA
autocast the kernel and the FFT stay in float32.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyra.errors import ConfigError, DataError

POOLINGS = ("mean", "max", "first")


@dataclass
class LyraConfig:
    d_input: int = 20  # alphabet size (one-hot channels)
    d_output: int = 1  # targets (regression) or classes
    d_model: int = 64  # H
    d_state: int = 64  # N; N/2 complex conjugate-pair modes per channel
    pgc_expansions: tuple[float, ...] = (0.25, 2.0)  # one PGC layer per entry, e = int(d_model * r)
    n_s4d: int = 1  # pre-norm residual S4D blocks
    dropout: float = 0.2
    bidirectional: bool = False  # S4D with a forward and a backward kernel, summed
    kernel_size: int = 3  # PGC depthwise conv, odd, "same" padding
    pooling: str = "mean"  # mean | max | first
    token_level: bool = False  # output (B, L, d_output) instead of pooling
    ssm_lr: float = 1e-3  # learning rate of log_dt and A (configure_optimizer)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    prior_length: int = 0  # positions of a fixed per-site prior table S (0: no prior term)
    prior_sign: int = 0  # the prior weight beta: 0 free; +1 / -1 held to that sign (sign * softplus)

    def __post_init__(self) -> None:
        self._check_types()
        self.pgc_expansions = tuple(float(r) for r in self.pgc_expansions)
        for key in ("d_input", "d_output", "d_model", "d_state", "kernel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1, got {getattr(self, key)!r}")
        if self.d_state % 2:
            raise ConfigError(f"model.d_state: must be even (conjugate pairs), got {self.d_state}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size: must be odd for 'same' padding, got {self.kernel_size}")
        if self.n_s4d < 0:
            raise ConfigError(f"model.n_s4d: must be >= 0, got {self.n_s4d}")
        for r in self.pgc_expansions:
            if int(self.d_model * r) < 1:
                raise ConfigError(f"model.pgc_expansions: {r} gives fewer than 1 channel at d_model={self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling: must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 < self.dt_min < self.dt_max:
            raise ConfigError(f"model.dt_min/dt_max: need 0 < dt_min < dt_max, got {self.dt_min}, {self.dt_max}")
        if self.ssm_lr <= 0:
            raise ConfigError(f"model.ssm_lr: must be > 0, got {self.ssm_lr}")
        if self.prior_length < 0 or (self.prior_length and self.token_level):
            raise ConfigError(f"model.prior_length: must be >= 0 and 0 with token_level, got {self.prior_length}")
        if self.prior_sign not in (-1, 0, 1):
            raise ConfigError(f"model.prior_sign: must be -1, 0 or 1, got {self.prior_sign}")

    def _check_types(self) -> None:
        def bad(key: str, want: str) -> ConfigError:
            return ConfigError(f"model.{key}: expected {want}, got {getattr(self, key)!r}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for key in ("d_input", "d_output", "d_model", "d_state", "n_s4d", "kernel_size", "prior_length", "prior_sign"):
            if not isinstance(getattr(self, key), int) or isinstance(getattr(self, key), bool):
                raise bad(key, "an integer")
        for key in ("dropout", "ssm_lr", "dt_min", "dt_max"):
            if not number(getattr(self, key)):
                raise bad(key, "a number")
        for key in ("bidirectional", "token_level"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        if not isinstance(self.pooling, str):
            raise bad("pooling", "a string")
        r = self.pgc_expansions
        if not isinstance(r, (list, tuple)) or not all(number(x) and x > 0 for x in r):
            raise bad("pgc_expansions", "a list of positive numbers")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LyraConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"model.{key}: unknown key; expected one of {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for JSON and `torch.load(weights_only=True)`."""
        d = dataclasses.asdict(self)
        d["pgc_expansions"] = list(self.pgc_expansions)
        return d


def _onednn_linear_op():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_op()
USE_ONEDNN_LINEAR = True  # switch for tests and comparisons


class Linear(nn.Linear):
    """nn.Linear that calls oneDNN's matmul directly for float32 inference on CPU.

    torch's CPU linear goes through MKL, which runs AVX2 code on AMD CPUs; oneDNN uses AVX-512 where the
    CPU has it (~2.3x faster on this project's AMD EPYC). Same parameters, same result.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (USE_ONEDNN_LINEAR and _ONEDNN_LINEAR is not None and x.device.type == "cpu"
                and x.dtype == self.weight.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")):
            return _ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """weight * x / (||x||_2 / sqrt(d) + eps) over the last dim; eps outside the sqrt, as in the authors' code.

    One fused norm reduction and two multiplies: torch's own rms_norm is ~2x slower on CPU.
    """

    def __init__(self, d: int, eps: float = 1e-8):
        super().__init__()
        self.eps, self.scale = eps, d**-0.5
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32) * self.scale  # (..., 1)
        y = x * (1.0 / (rms + self.eps)).to(x.dtype)  # (..., d)
        if torch.is_grad_enabled():
            return y * self.weight.to(x.dtype)
        return y.mul_(self.weight.to(x.dtype))  # inference: in place, one buffer fewer


def _zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x (B, L, C) with padded positions set to zero."""
    return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


def depthwise_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """nn.Conv1d `conv` (depthwise, 'same' padding) applied to x (B, L, e) in that layout -> (B, L, e).

    Viewed as a (B, e, 1, L) image in channels-last memory, oneDNN/cuDNN convolve without the two
    transposed copies that Conv1d on (B, e, L) needs (~8x faster on CPU).
    """
    x4 = x.unsqueeze(1).permute(0, 3, 1, 2)  # (B, e, 1, L), channels-last strides
    y = F.conv2d(x4, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups)
    return y.permute(0, 2, 3, 1).squeeze(1)  # (B, L, e)


class PGC(nn.Module):
    """Projected gated convolution: [x; v] = RMSNorm(W_in u), out = RMSNorm(W_out (v * dwconv(x)))."""

    def __init__(self, d_model: int, expansion: float, kernel_size: int = 3):
        super().__init__()
        e = int(d_model * expansion)
        self.e = e
        self.in_linear = Linear(d_model, 2 * e)
        self.in_norm = RMSNorm(2 * e)  # over the concatenated [x; v], before the split
        self.conv = nn.Conv1d(e, e, kernel_size, padding=kernel_size // 2, groups=e)  # depthwise, symmetric
        self.out_linear = Linear(e, d_model)
        self.out_norm = RMSNorm(d_model)

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xv = self.in_norm(self.in_linear(u))  # (B, L, 2e)
        x, v = xv.split(self.e, dim=-1)  # (B, L, e) each
        x = _zero_padding(x, mask)  # the symmetric conv must see zeros past the sequence end
        x = depthwise_conv(x, self.conv)  # (B, L, e)
        return self.out_norm(self.out_linear(v * x))  # (B, L, d)


def fft_size(n: int) -> int:
    """Smallest 2^k or 3 * 2^k >= n: FFT lengths that pocketfft and cuFFT transform fastest."""
    p2 = 1 << max(1, (n - 1).bit_length())
    return 3 * p2 // 4 if 3 * p2 // 4 >= n and p2 >= 4 else p2


def fft_conv(u: torch.Tensor, K_f: torch.Tensor, n: int) -> torch.Tensor:
    """Causal convolution of u (B, C, L) with the kernels whose rfft at size n >= 2L is K_f (C, n//2+1)."""
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * K_f, n=n)[..., : u.shape[-1]]  # (B, C, L)


class S4DKernel(nn.Module):
    """Diagonal SSM kernels K (C, L) for C channels, S4D-Lin init, ZOH discretisation.

    K[c, l] = 2 Re sum_n C'[c, n] z[c, n]^l,  z = exp(dt A),  C' = C (z - 1) / A,  n < N/2.
    """

    def __init__(self, channels: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        C, N2 = channels, d_state // 2
        log_dt = torch.rand(C) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # (C,)
        self.log_dt = nn.Parameter(log_dt)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(C, N2, dtype=torch.cfloat)))  # (C, N2, 2)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(C, N2)))  # Re A = -0.5
        self.A_imag = nn.Parameter(math.pi * torch.arange(N2, dtype=torch.float).repeat(C, 1))  # Im A = pi n
        self.chunk: int | None = None  # powers are built in chunks of this many steps; None = ~sqrt(L)

    def modes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C' (C, N2), dtA (C, N2)) in complex128."""
        dt = torch.exp(self.log_dt.double())  # (C,)
        A = torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())  # (C, N2)
        dtA = A * dt.unsqueeze(-1)  # (C, N2)
        Cp = torch.view_as_complex(self.C.double().contiguous()) * (torch.exp(dtA) - 1) / A  # (C, N2)
        return Cp, dtA

    def forward(self, L: int) -> torch.Tensor:
        """K (C, L) float32.

        Powers z^l, l = c*T + t, factor as z^(cT) * z^t, so the (C, N2, L) Vandermonde tensor is never
        built: two small tables in float64 (exact exponentials), then one real batched matmul in float32.
        """
        Cp, dtA = self.modes()
        T = self.chunk or max(1, math.isqrt(L - 1) + 1)  # steps per chunk
        n_chunks = -(-L // T)
        t = torch.arange(T, device=dtA.device, dtype=torch.float64)
        c = torch.arange(n_chunks, device=dtA.device, dtype=torch.float64) * T
        z_t = torch.exp(dtA.unsqueeze(-1) * t)  # (C, N2, T)       z^t
        w_c = Cp.unsqueeze(-1) * torch.exp(dtA.unsqueeze(-1) * c)  # (C, N2, n_chunks)   C' z^(cT)
        # 2 Re(w z) = 2 (w.re z.re - w.im z.im), summed over n: a real matmul over 2 * N2 rows
        w = torch.cat([w_c.real, -w_c.imag], dim=1).float()  # (C, N, n_chunks)
        z = torch.cat([z_t.real, z_t.imag], dim=1).float()  # (C, N, T)
        K = 2 * torch.bmm(w.transpose(1, 2), z)  # (C, n_chunks, T)
        return K.reshape(K.shape[0], -1)[:, :L]  # (C, L)


class S4D(nn.Module):
    """S4D layer: y = GLU(W Dropout(GELU(K * u + D u))), on (B, L, H).

    Bidirectional: y = K_fwd * u + flip(K_bwd * flip(u)) + D u, with the two kernels as one two-sided
    kernel in a single FFT (the FFT is >= 2L long, so neither side wraps around).
    """

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, bidirectional: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        self.h, self.bidirectional = d_model, bidirectional
        self.kernel = S4DKernel(d_model * (2 if bidirectional else 1), d_state, dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(d_model))  # (H,)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout1d(dropout) if dropout > 0 else nn.Identity()  # mask (B, H, 1), tied over L
        self.output_linear = Linear(d_model, 2 * d_model)  # the 1x1 convolution to 2H, then GLU
        self._cache: dict[tuple[int, int], torch.Tensor] = {}  # eval mode: (L, n) -> K_f
        self._cache_version: tuple = ()  # the kernel parameters the cache was built from

    def train(self, mode: bool = True) -> "S4D":
        self._cache.clear()
        return super().train(mode)

    def _param_version(self) -> tuple:
        """Changes whenever a kernel parameter is updated in place (optimiser step, load_state_dict) or moved."""
        params = (self.kernel.log_dt, self.kernel.C, self.kernel.log_A_real, self.kernel.A_imag)
        return tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in params)

    def kernel_f(self, L: int, n: int) -> torch.Tensor:
        """rfft of the (two-sided) kernel at FFT size n: (H, n//2 + 1) complex64. Cached in eval mode."""
        use_cache = not self.training and not torch.is_grad_enabled()
        if use_cache:
            version = self._param_version()
            if version != self._cache_version:
                self._cache.clear()
                self._cache_version = version
            if (L, n) in self._cache:
                return self._cache[L, n]
        K = self.kernel(L)  # (C, L)
        if self.bidirectional:
            k_fwd, k_bwd = K[: self.h], K[self.h:]  # (H, L) each
            # lag j >= 0 at index j, lag -j at index n - j; lag 0 gets both
            k = F.pad(k_fwd, (0, n - L)) + F.pad(k_bwd[:, 1:].flip(-1), (n - L + 1, 0))  # (H, n)
            k[:, 0] = k[:, 0] + k_bwd[:, 0]
            K_f = torch.fft.rfft(k, n=n)  # (H, n//2+1)
        else:
            K_f = torch.fft.rfft(K, n=n)  # (H, n//2+1)
        if use_cache:
            if len(self._cache) >= 8:  # a few lengths (variable-length scoring), not unbounded
                self._cache.pop(next(iter(self._cache)))
            self._cache[L, n] = K_f
        return K_f

    def ssm(self, u: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """The linear state-space part, K * u + D u: (B, H, L) -> (B, H, L) float32.

        Linear (not circular) convolution: both signals are zero-padded to n >= 2L before the FFT.
        `window` (long L, no autograd): transform groups of channels of about window * H elements at a time.
        """
        B, H, L = u.shape
        n = fft_size(2 * L)
        with torch.autocast(u.device.type, enabled=False):  # kernel and FFT stay in float32
            u = u.float()
            K_f = self.kernel_f(L, n)  # (H, n//2+1)
            g = H if window is None or L <= 2 * window else max(1, window * H // n)  # channels per group
            if g >= H:
                y = fft_conv(u, K_f, n)  # (B, H, L)
            else:
                y = torch.cat([fft_conv(u[:, h: h + g], K_f[h: h + g], n) for h in range(0, H, g)], dim=1)
            return torch.addcmul(y, self.D.unsqueeze(-1), u)  # (B, H, L)

    def forward(self, u: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """u (B, L, H) -> (B, L, H); the convolution runs in (B, H, L), FFT along the contiguous axis.

        `window` (eval, no autograd): run the position-wise output stage in pieces of that many positions.
        """
        y = self.ssm(u.transpose(1, 2).contiguous(), window).to(u.dtype)  # (B, H, L)
        L = y.shape[-1]
        if window is None or L <= 2 * window:
            return self.output(y)
        return torch.cat([self.output(y[..., s: s + window]) for s in range(0, L, window)], dim=1)  # (B, L, H)

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, L) -> (B, L, H): GELU, dropout tied over L, 1x1 convolution to 2H, GLU."""
        y = self.dropout(self.activation(y))  # (B, H, L)
        return F.glu(self.output_linear(y.transpose(1, 2)), dim=-1)  # (B, L, H)


class S4DBlock(nn.Module):
    """x + Dropout(S4D(RMSNorm(x))) on (B, L, H)."""

    def __init__(self, cfg: LyraConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model)
        self.s4d = S4D(cfg.d_model, cfg.d_state, cfg.dropout, cfg.bidirectional, cfg.dt_min, cfg.dt_max)
        self.dropout = nn.Dropout(cfg.dropout)
        self.bidirectional = cfg.bidirectional

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
        z = self.norm(x)  # (B, L, H)
        if self.bidirectional:
            z = _zero_padding(z, mask)  # the backward pass must not see padding (forward is causal: safe)
        return x + self.dropout(self.s4d(z, window))  # (B, L, H)


class Lyra(nn.Module):
    """Lyra sequence-to-function model: forward(x (B, L, d_input), mask (B, L) bool) -> (B, d_output).

    Lyra(d_input=20, d_output=1, d_model=64, d_state=64, **other LyraConfig fields), or
    Lyra.from_config(cfg); `model.config` is the LyraConfig (store `config.to_dict()` in checkpoints).
    Padded positions (mask False) do not change a sequence's output.
    """

    def __init__(self, d_input: int = 20, d_output: int = 1, d_model: int = 64, d_state: int = 64, **kwargs: Any):
        super().__init__()
        cfg = LyraConfig.from_dict(dict(d_input=d_input, d_output=d_output, d_model=d_model, d_state=d_state,
                                        **kwargs))
        self.config = cfg
        self.encoder = Linear(cfg.d_input, cfg.d_model)
        self.pgcs = nn.ModuleList(PGC(cfg.d_model, r, cfg.kernel_size) for r in cfg.pgc_expansions)
        self.s4ds = nn.ModuleList(S4DBlock(cfg) for _ in range(cfg.n_s4d))
        self.decoder = nn.Linear(cfg.d_model, cfg.d_output)
        if cfg.prior_length:
            # Evolutionary prior: a fixed table S (L, d_input) of per-site scores from homologs,
            # standardised on the training variants (mu, sigma) and scaled by a learned beta per output.
            # With a few hundred measured variants the network learns what the family does not know.
            # With prior_sign set, beta = sign * softplus(prior_beta): it starts at ln 2 and a handful of
            # unrepresentative variants can shrink it but not invert it.
            self.register_buffer("prior_table", torch.zeros(cfg.prior_length, cfg.d_input))  # (L, C)
            self.register_buffer("prior_mu", torch.zeros(()))
            self.register_buffer("prior_sigma", torch.ones(()))
            self.prior_beta = nn.Parameter(torch.zeros(cfg.d_output))  # (d_output,)

    @classmethod
    def from_config(cls, cfg: LyraConfig | Mapping[str, Any]) -> "Lyra":
        if not isinstance(cfg, LyraConfig):
            cfg = LyraConfig.from_dict(cfg)
        return cls(**dataclasses.asdict(cfg))

    # CPU inference (no autograd) runs in pieces, so that intermediates stay in cache and get reused
    # by the allocator instead of being page-faulted in afresh (2-3x faster): big batches in slices of
    # about `inference_chunk` positions (B * L); a sequence longer than 2 * `inference_window` with its
    # PGC layers and S4D output stage in windows of that many positions. The output is the same.
    # Measured on this project's 2-core CPU (docs/benchmarks.md): slices of 32,768 positions beat 8,192
    # by 25% at L = 56 and 10% at L = 237; windows of 8,192 are best at L = 65,536.
    inference_chunk: int = 32768
    inference_window: int = 8192

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, d_input) float, mask (B, L) bool True on residues -> (B, d_output) or (B, L, d_output)."""
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
        pieces = not torch.is_grad_enabled() and x.device.type == "cpu"
        B, L = x.shape[:2]
        W = self.inference_window if pieces and L > 2 * self.inference_window else None  # positions per window
        step = max(1, self.inference_chunk // max(L, 1)) if pieces else B  # sequences per slice
        if B <= step:
            return self._forward(x, mask, W)
        masks = mask.split(step) if mask is not None else [None] * -(-B // step)
        return torch.cat([self._forward(xs, ms, W) for xs, ms in zip(x.split(step), masks)])

    def prior(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised prior score of one-hot sequences x (B, L, d_input) -> (B,)."""
        if x.shape[1] != self.config.prior_length:
            raise DataError(f"the model's evolutionary prior covers sequences of length {self.config.prior_length} "
                            f"(the wild type's), got length {x.shape[1]}")
        s = torch.einsum("blc,lc->b", x, self.prior_table.to(x.dtype))  # (B,)
        return (s - self.prior_mu) / self.prior_sigma  # (B,)

    def prior_weight(self) -> torch.Tensor:
        """beta (d_output,): the weight of the standardised prior score in each output."""
        if self.config.prior_sign == 0:
            return self.prior_beta
        return self.config.prior_sign * F.softplus(self.prior_beta)  # (d_output,)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None, W: int | None) -> torch.Tensor:
        u = x
        x = self._local(x, mask, W)  # (B, L, H)
        for block in self.s4ds:
            x = block(x, mask, None if self.training else W)  # (B, L, H); dropout masks span all of L
        if self.config.token_level:
            return _zero_padding(self.decoder(x), mask)  # (B, L, d_output)
        y = self.decoder(self.pool(x, mask))  # (B, d_output)
        if self.config.prior_length:
            y = y + self.prior(u).unsqueeze(-1) * self.prior_weight()  # (B, d_output)
        return y

    def _local(self, u: torch.Tensor, mask: torch.Tensor | None, W: int | None) -> torch.Tensor:
        """Encoder and PGC layers, (B, L, d_input) -> (B, L, H), whole or in windows of W positions.

        Each PGC sees kernel_size // 2 neighbours per side, so a window plus a halo of
        n_pgc * (kernel_size // 2) positions on each side gives exact outputs for its inner W positions.
        """
        L = u.shape[1]
        if W is None or L <= 2 * W:
            return self._encode(u, mask)
        halo = len(self.pgcs) * (self.config.kernel_size // 2)
        pieces = []
        for start in range(0, L, W):
            lo, hi = max(0, start - halo), min(L, start + W + halo)
            x = self._encode(u[:, lo:hi], None if mask is None else mask[:, lo:hi])  # (B, hi - lo, H)
            pieces.append(x[:, start - lo: start - lo + W])
        return torch.cat(pieces, dim=1)  # (B, L, H)

    def _encode(self, u: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.encoder(u)  # (B, L, H)
        for pgc in self.pgcs:
            x = pgc(x, mask)  # (B, L, H)
        return x

    def pool(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, H) -> (B, H), ignoring padded positions."""
        how = self.config.pooling
        if how == "first":
            return x[:, 0]
        if mask is None:
            return x.mean(1) if how == "mean" else x.amax(1)
        m = mask.unsqueeze(-1)  # (B, L, 1)
        if how == "mean":
            return (x * m.to(x.dtype)).sum(1) / m.sum(1).clamp(min=1).to(x.dtype)
        return x.masked_fill(~m, float("-inf")).amax(1)


def ssm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The S4D discretisation parameters (log_dt, Re A, Im A): own learning rate, no weight decay."""
    return [p for m in model.modules() if isinstance(m, S4DKernel) for p in (m.log_dt, m.log_A_real, m.A_imag)]


def configure_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01,
                        ssm_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW with two groups: SSM parameters (lr=ssm_lr, wd=0) and everything else (lr, weight_decay).

    As in the authors' code, everything else (C, D, norms and biases included) is decayed. The SSM group
    is what the official S4D asks for through its `_optim` tags, which the official training loops never read.
    """
    if ssm_lr is None:
        cfg = getattr(model, "config", None)
        ssm_lr = cfg.ssm_lr if cfg is not None else 1e-3
    ssm_ids = {id(p) for p in ssm_parameters(model)}
    ssm = [p for p in model.parameters() if id(p) in ssm_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in ssm_ids and p.requires_grad]
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if ssm:
        groups.append({"params": ssm, "lr": ssm_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
