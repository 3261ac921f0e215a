"""Lyra: projected gated convolutions (PGC) followed by diagonal state-space (S4D) layers.

Ramesh, Siddiqui, Gu, Mitzenmacher, Sabeti, "Lyra: An Efficient and Expressive Subquadratic
Architecture for Modeling Biological Sequences" (arXiv 2503.16351). The network, on one-hot u (B, L, d_input):

    x = Linear(d_input -> H)(u)                       # encoder
    x = PGC(0.25)(x); x = PGC(2.0)(x)                 # no residual around the PGCs
    x = x + Dropout(S4D(RMSNorm(x)))                  # pre-norm residual, n_s4d times (lyra.model.s4d)
    y = Linear(H -> d_output)(norm(pool(x)))          # masked mean/max/first pool, or per token
    y = y + beta * (sum_l u_l . S_l - mu) / sigma      # optional evolutionary prior (lyra.design.prior)

with H = d_model; norm is the identity, or with `pool_norm: batch` a standardisation of each pooled
channel across the variants (BatchNorm1d without affine). With `site_positions` set (model.sites:
varied), the network reads only those columns of u, while the prior still reads the whole sequence.

Beyond the paper's model: padding masks, any number of PGC/S4D layers, a
bidirectional S4D, other pooling, a token-level head, and an optimiser helper that gives the SSM
parameters their own learning rate.

Layout: the model runs in (B, L, H) so the linear layers are plain GEMMs; the S4D convolution runs
in (B, H, L) so the FFT is along the last (contiguous) axis. The layers call `lyra.model.fast` for
the same tensors computed faster (CPU inference in pieces, oneDNN linears, channels-last depthwise
convolution); with the fast paths disabled they run the computation written here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyra.errors import ConfigError, DataError
from lyra.model import fast
from lyra.model.s4d import S4D, S4DKernel
from lyra.schema import schema_fields


@dataclass
@schema_fields("model", derived=("d_input", "d_output", "token_level", "ssm_lr", "dt_min", "dt_max",
                                 "prior_length", "prior_sign", "site_positions"))
class LyraConfig:
    """The architecture: the `model` section of lyra/schema.yaml (defaults there) and the fields the code sets."""

    d_input: int = 20  # alphabet size (one-hot channels), from the data
    d_output: int = 1  # targets (regression) or classes, from the data
    d_model: int  # H
    d_state: int  # N; N/2 complex conjugate-pair modes per channel
    pgc_expansions: tuple[float, ...]  # one PGC layer per entry, e = int(d_model * r)
    n_s4d: int  # pre-norm residual S4D blocks
    dropout: float
    bidirectional: bool  # S4D with a forward and a backward kernel, summed
    kernel_size: int  # PGC depthwise conv, odd, "same" padding
    pooling: str  # mean | max | first
    pool_norm: str  # none | batch: standardise each pooled channel across the variants
    sites: str  # all | varied: how training sets site_positions
    token_level: bool = False  # output (B, L, d_output) instead of pooling
    ssm_lr: float = 1e-3  # learning rate of log_dt and A (configure_optimizer)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    prior_length: int = 0  # positions of a fixed per-site prior table S (0: no prior term)
    prior_sign: int = 0  # the prior weight beta: 0 free; +1 / -1 held to that sign (sign * softplus)
    site_positions: tuple[int, ...] = ()  # 0-based columns the network reads (empty: every position)

    def __post_init__(self) -> None:
        self.pgc_expansions = tuple(float(r) for r in self.pgc_expansions)
        self.site_positions = tuple(int(p) for p in self.site_positions)
        if any(p < 0 for p in self.site_positions) or list(self.site_positions) != sorted(set(self.site_positions)):
            raise ConfigError(f"model.site_positions: must be increasing positions >= 0, got {self.site_positions}")
        for r in self.pgc_expansions:
            if int(self.d_model * r) < 1:
                raise ConfigError(f"model.pgc_expansions: {r} gives fewer than 1 channel at d_model={self.d_model}")
        for key in ("d_input", "d_output"):  # set by the code from the data, not in the schema
            n = getattr(self, key)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"model.{key}: must be an integer >= 1, got {n!r}")
        if not 0.0 < self.dt_min < self.dt_max:
            raise ConfigError(f"model.dt_min/dt_max: need 0 < dt_min < dt_max, got {self.dt_min}, {self.dt_max}")
        if not self.ssm_lr > 0:
            raise ConfigError(f"model.ssm_lr: must be > 0, got {self.ssm_lr!r}")
        if self.prior_length < 0 or (self.prior_length and self.token_level):
            raise ConfigError(f"model.prior_length: must be >= 0 and 0 with token_level, got {self.prior_length}")
        if self.prior_sign not in (-1, 0, 1):
            raise ConfigError(f"model.prior_sign: must be -1, 0 or 1, got {self.prior_sign!r}")


class RMSNorm(nn.Module):
    """weight * x / (||x||_2 / sqrt(d) + eps) over the last dim; eps outside the sqrt, as in the authors' code."""

    def __init__(self, d: int, eps: float = 1e-8):
        super().__init__()
        self.eps, self.scale = eps, d**-0.5
        self.weight = nn.Parameter(torch.ones(d))  # (d,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32) * self.scale  # (..., 1)
        y = x * (1.0 / (rms + self.eps)).to(x.dtype)  # (..., d)
        if fast.inference():
            return y.mul_(self.weight.to(x.dtype))  # (..., d) in place: one buffer fewer
        return y * self.weight.to(x.dtype)  # (..., d)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x (B, L, H) with padded positions set to zero."""
    return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


class PGC(nn.Module):
    """Projected gated convolution: [x; v] = RMSNorm(W_in u), out = RMSNorm(W_out (v * dwconv(x))).

    e = int(d_model * expansion) channels; dwconv is a depthwise, symmetric ('same') convolution.
    """

    def __init__(self, d_model: int, expansion: float, kernel_size: int = 3):
        super().__init__()
        e = int(d_model * expansion)
        self.e = e
        self.in_linear = fast.Linear(d_model, 2 * e)
        self.in_norm = RMSNorm(2 * e)  # over the concatenated [x; v], before the split
        self.conv = nn.Conv1d(e, e, kernel_size, padding=kernel_size // 2, groups=e)  # depthwise, symmetric
        self.out_linear = fast.Linear(e, d_model)
        self.out_norm = RMSNorm(d_model)

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xv = self.in_norm(self.in_linear(u))  # (B, L, 2e)
        x, v = xv.split(self.e, dim=-1)  # (B, L, e) each
        x = _zero_padding(x, mask)  # the symmetric conv must see zeros past the sequence end
        if fast.enabled():
            x = fast.depthwise_conv(x, self.conv)  # (B, L, e), channels-last
        else:
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, L, e)
        return self.out_norm(self.out_linear(v * x))  # (B, L, H)


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


class PoolNorm(nn.BatchNorm1d):
    """Standardises each pooled channel (B, H) across the variants, without affine (the decoder follows).

    Training uses the batch's statistics (a batch of one variant has no spread: the stored ones);
    prediction uses the stored ones, which training sets from the training variants after every epoch.
    """

    def __init__(self, d: int):
        super().__init__(d, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)  # (1, H)
        return super().forward(x)  # (B, H)


class Lyra(nn.Module):
    """Lyra sequence-to-function model: forward(u (B, L, d_input), mask (B, L) bool) -> (B, d_output).

    Lyra(d_input=20, d_output=1, d_model=64, ...any LyraConfig field), or Lyra.from_config(cfg);
    `model.config` is the LyraConfig (store `config.to_dict()` in checkpoints). Padded positions
    (mask False) do not change a sequence's output.
    """

    def __init__(self, **config: Any):
        super().__init__()
        cfg = LyraConfig.from_dict(config)
        self.config = cfg
        self.encoder = fast.Linear(cfg.d_input, cfg.d_model)
        self.pgcs = nn.ModuleList(PGC(cfg.d_model, r, cfg.kernel_size) for r in cfg.pgc_expansions)
        self.s4ds = nn.ModuleList(S4DBlock(cfg) for _ in range(cfg.n_s4d))
        if cfg.pool_norm == "batch" and not cfg.token_level:
            # Variants of one protein differ at a few of its L positions, so their pooled features differ
            # by about k/L of their size: standardised across the variants, the decoder reads those
            # differences at any length (with mean pooling alone a 500-residue enzyme barely trains).
            self.pool_norm = PoolNorm(cfg.d_model)
        else:
            self.pool_norm = nn.Identity()
        self.decoder = nn.Linear(cfg.d_model, cfg.d_output)
        if cfg.prior_length:
            # Evolutionary prior: a fixed table S (L, d_input) of per-site scores from homologs,
            # standardised on the training variants (mu, sigma) and scaled by a learned beta per output.
            # With a few hundred measured variants the network learns what the family does not know.
            # With prior_sign set, beta = sign * softplus(prior_beta): it starts at ln 2 and a handful of
            # unrepresentative variants can shrink it but not invert it.
            self.register_buffer("prior_table", torch.zeros(cfg.prior_length, cfg.d_input))  # (L, d_input)
            self.register_buffer("prior_mu", torch.zeros(()))
            self.register_buffer("prior_sigma", torch.ones(()))
            self.prior_beta = nn.Parameter(torch.zeros(cfg.d_output))  # (d_output,)

    @classmethod
    def from_config(cls, cfg: LyraConfig | Mapping[str, Any]) -> "Lyra":
        if not isinstance(cfg, LyraConfig):
            cfg = LyraConfig.from_dict(cfg)
        return cls(**dataclasses.asdict(cfg))

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """u (B, L, d_input) float, mask (B, L) bool True on residues -> (B, d_output) or (B, L, d_output)."""
        if mask is not None:
            mask = mask.to(device=u.device, dtype=torch.bool)
        prior = self.prior(u).unsqueeze(-1) * self.prior_weight() if self.config.prior_length else None  # (B, d_output)
        if self.config.site_positions:
            u, mask = self.at_sites(u), None if mask is None else self.at_sites(mask)  # (B, S, d_input), (B, S)
        if fast.cpu_inference(u):
            y = fast.in_pieces(self.network, u, mask)  # slices of the batch, windows along a long L
        else:
            y = self.network(u, mask)  # (B, d_output) or (B, L, d_output)
        return y if prior is None else y + prior

    def network(self, u: torch.Tensor, mask: torch.Tensor | None, window: int | None = None) -> torch.Tensor:
        """The network on one batch; `window` (from `fast.in_pieces`): positions per window along a long L."""
        if window is None:
            x = self.local(u, mask)  # (B, L, H)
        else:  # each PGC sees kernel_size // 2 neighbours per side
            halo = len(self.pgcs) * (self.config.kernel_size // 2)
            x = fast.local_in_windows(self.local, u, mask, window, halo)  # (B, L, H)
        for block in self.s4ds:
            x = block(x, mask, None if self.training else window)  # (B, L, H); dropout masks span all of L
        if self.config.token_level:
            return _zero_padding(self.decoder(x), mask)  # (B, L, d_output)
        return self.decoder(self.pool_norm(self.pool(x, mask)))  # (B, d_output)

    def at_sites(self, t: torch.Tensor) -> torch.Tensor:
        """The columns `site_positions` of a (B, L, ...) tensor -> (B, S, ...)."""
        positions = self.config.site_positions
        if t.shape[1] <= positions[-1]:
            raise DataError(f"the model reads sites up to position {positions[-1] + 1} (the varied sites of its "
                            f"training data), got sequences of length {t.shape[1]}")
        return t[:, list(positions)]

    def local(self, u: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder and PGC layers: (B, L, d_input) -> (B, L, H)."""
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

    def prior(self, u: torch.Tensor) -> torch.Tensor:
        """Standardised prior score of one-hot sequences u (B, L, d_input) -> (B,)."""
        if u.shape[1] != self.config.prior_length:
            raise DataError(f"the model's evolutionary prior covers sequences of length {self.config.prior_length} "
                            f"(the wild type's), got length {u.shape[1]}")
        s = torch.einsum("bld,ld->b", u, self.prior_table.to(u.dtype))  # (B,)
        return (s - self.prior_mu) / self.prior_sigma  # (B,)

    def prior_weight(self) -> torch.Tensor:
        """beta (d_output,): the weight of the standardised prior score in each output."""
        if self.config.prior_sign == 0:
            return self.prior_beta
        return self.config.prior_sign * F.softplus(self.prior_beta)  # (d_output,)


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
