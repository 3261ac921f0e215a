"""The S4D layer: a diagonal state-space model applied as a long convolution.

Gu, Gupta, Goel, Re, "On the Parameterization and Initialization of Diagonal State Space Models"
(S4D, NeurIPS 2022, arXiv 2206.11893), as used by Lyra (Ramesh, Siddiqui, Gu, Mitzenmacher, Sabeti,
arXiv 2503.16351). Per channel h, with N/2 complex modes (conjugate pairs, hence the factor 2):

    x'(t) = A x(t) + B u(t),  y(t) = C x(t) + D u(t),   A diagonal, B = 1 (folded into C)
    ZOH with step dt:  A_bar = exp(dt A),  B_bar = (exp(dt A) - 1) / A
    K[h, l] = 2 Re sum_n C[h, n] B_bar[h, n] A_bar[h, n]^l          (a Vandermonde product)
    y = K * u + D u,  by FFT of length 2L (a linear, not circular, convolution)

S4D-Lin initialisation: Re A = -1/2, Im A = pi n, log dt ~ U[log dt_min, log dt_max], C ~ N(0, 1) complex.
Bidirectional (an extension): a second set of kernels runs right to left, y += flip(K_bwd * flip(u)).

H is the number of channels (d_model), N the state size (d_state), L the sequence length. The layer
calls `lyra.model.fast` for the same kernel and convolution computed faster; with the fast paths
disabled it runs the computation written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyra.model import fast


class S4DKernel(nn.Module):
    """The SSM convolution kernels K (H, L) of H channels from their diagonal parameters (A, C, dt)."""

    def __init__(self, H: int, N: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # (H,)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)))  # (H, N/2, 2)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, N // 2)))  # (H, N/2)  Re A = -1/2
        self.A_imag = nn.Parameter(math.pi * torch.arange(N // 2, dtype=torch.float).repeat(H, 1))  # (H, N/2)  pi n

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dt A, C B_bar), each (H, N/2) complex128: float64 keeps exp(dt A l) exact at long L."""
        dt = torch.exp(self.log_dt.double())  # (H,)
        A = torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())  # (H, N/2)
        C = torch.view_as_complex(self.C.double().contiguous())  # (H, N/2)
        dtA = A * dt.unsqueeze(-1)  # (H, N/2)
        return dtA, C * (torch.exp(dtA) - 1) / A  # (H, N/2) each

    def forward(self, L: int) -> torch.Tensor:
        """K (H, L) float32: K[h, l] = 2 Re sum_n (C B_bar)[h, n] exp(dt A[h, n] l)."""
        dtA, CB = self.discretize()  # (H, N/2) each
        if fast.enabled():
            return fast.vandermonde(CB, dtA, L)  # (H, L), without the (H, N/2, L) tensor
        V = torch.exp(dtA.unsqueeze(-1) * torch.arange(L, device=dtA.device))  # (H, N/2, L)  A_bar^l
        K = 2 * torch.einsum("hn,hnl->hl", CB, V).real  # (H, L)
        return K.float()  # (H, L)


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution y[l] = sum_{j<=l} K[l-j] u[j] of u (B, H, L) with K (H, L), by FFT of length 2L."""
    L = u.shape[-1]
    K_f = torch.fft.rfft(K, n=2 * L)  # (H, L+1)
    u_f = torch.fft.rfft(u, n=2 * L)  # (B, H, L+1)
    return torch.fft.irfft(u_f * K_f, n=2 * L)[..., :L]  # (B, H, L)


class S4D(nn.Module):
    """S4D layer on (B, L, H): y = GLU(W Dropout(GELU(K * u + D u))), W the 1x1 convolution H -> 2H."""

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.0, bidirectional: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        self.d_model, self.bidirectional = d_model, bidirectional
        # bidirectional: kernels 0..H-1 run left to right, H..2H-1 right to left
        self.kernel = S4DKernel(d_model * (2 if bidirectional else 1), d_state, dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(d_model))  # (H,)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout1d(dropout) if dropout > 0 else nn.Identity()  # mask (B, H, 1), tied over L
        self.output_linear = fast.Linear(d_model, 2 * d_model)  # the 1x1 convolution to 2H, then GLU

    def ssm(self, u: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """The state-space part, y = K * u + D u: (B, H, L) -> (B, H, L) float32.

        `window`: set by `fast.in_pieces` for a long L (CPU inference), for the fast convolution.
        """
        H, L = u.shape[-2:]
        with torch.autocast(u.device.type, enabled=False):  # the kernel and the FFT stay in float32
            u = u.float()  # (B, H, L)
            if fast.enabled():
                y = fast.ssm_conv(self, u, window)  # (B, H, L), the same convolution
            else:
                K = self.kernel(L)  # (H, L), or (2H, L)
                y = fft_conv(u, K[:H])  # (B, H, L)
                if self.bidirectional:
                    y = y + fft_conv(u.flip(-1), K[H:]).flip(-1)  # (B, H, L)
            return torch.addcmul(y, self.D.unsqueeze(-1), u)  # (B, H, L)  + D u

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, L) -> (B, L, H): GELU, dropout tied over L, 1x1 convolution to 2H, GLU."""
        y = self.dropout(self.activation(y))  # (B, H, L)
        return F.glu(self.output_linear(y.transpose(1, 2)), dim=-1)  # (B, L, H)

    def forward(self, u: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """u (B, L, H) -> (B, L, H); the convolution runs in (B, H, L), the FFT along the contiguous axis."""
        y = self.ssm(u.transpose(1, 2).contiguous(), window).to(u.dtype)  # (B, H, L)
        if window is not None:
            return fast.along_length(self.output, y, window)  # (B, L, H)
        return self.output(y)  # (B, L, H)
