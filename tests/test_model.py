"""Lyra model: parameter counts, S4D against its recurrence, padding, gradients, caching, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from lyra import Lyra, LyraConfig
from lyra.errors import ConfigError
from lyra.model.lyra import S4D, Linear, S4DKernel, configure_optimizer, fft_size, ssm_parameters


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and spinning OpenMP threads crawl on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_(kernel: S4DKernel, gen: torch.Generator) -> None:
    """Random SSM parameters, away from the structured S4D-Lin init."""
    C, N2 = kernel.log_A_real.shape
    with torch.no_grad():
        kernel.log_dt.copy_(torch.empty(C).uniform_(math.log(1e-3), math.log(0.3), generator=gen))
        kernel.log_A_real.copy_(torch.empty(C, N2).uniform_(-3, 1, generator=gen))
        kernel.A_imag.copy_(torch.empty(C, N2).uniform_(0, 40, generator=gen))
        kernel.C.copy_(torch.randn(C, N2, 2, generator=gen))


def recurrence(kernel: S4DKernel, u: torch.Tensor) -> torch.Tensor:
    """Step the discretised system in float64: u (B, C, L) -> y (B, C, L), without the D term.

    x_{k+1} = z x_k + (z - 1)/A u_k,  y_k = 2 Re(C x_{k+1}),  z = exp(dt A),  x_0 = 0,
    so y_k = sum_{j<=k} 2 Re(C (z - 1)/A z^(k-j)) u_j = sum_j K[k - j] u_j.
    """
    dt = kernel.log_dt.detach().double().exp()[:, None]  # (C, 1)
    A = torch.complex(-kernel.log_A_real.detach().double().exp(), kernel.A_imag.detach().double())  # (C, N2)
    Cc = torch.view_as_complex(kernel.C.detach().double().contiguous())  # (C, N2)
    z, b = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A
    u = u.double()
    x = torch.zeros(u.shape[0], *A.shape, dtype=torch.complex128)  # (B, C, N2)
    ys = []
    for k in range(u.shape[-1]):
        x = z * x + b * u[:, :, k, None]
        ys.append(2 * (Cc * x).sum(-1).real)  # (B, C)
    return torch.stack(ys, -1)  # (B, C, L)


def naive_kernel(kernel: S4DKernel, L: int) -> torch.Tensor:
    """The reference Vandermonde product, materialising (C, N2, L), float64."""
    Cp, dtA = kernel.modes()
    V = torch.exp(dtA.unsqueeze(-1) * torch.arange(L, dtype=torch.float64))  # (C, N2, L)
    return 2 * torch.einsum("cn,cnl->cl", Cp, V).real  # (C, L)


def causal_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Direct causal convolution y[l] = sum_{j<=l} K[l-j] u[j], float64: u (B, C, L), K (C, L)."""
    L = u.shape[-1]
    idx = torch.arange(L)
    lag = idx[:, None] - idx[None, :]  # (L, L)
    T = torch.where(lag >= 0, K.double()[:, lag.clamp(min=0)], torch.zeros((), dtype=torch.float64))  # (C, L, L)
    return torch.einsum("clj,bcj->bcl", T, u.double())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


# ---- parameter counts and config -------------------------------------------------------------------


def test_parameter_counts_match_authors_model():
    assert n_params(Lyra(d_input=20, d_output=1, d_model=64, d_state=64)) == 47_169
    assert n_params(Lyra(d_input=4, d_output=1, d_model=64, d_state=64)) == 46_145


def test_config_round_trip_and_unknown_key(tmp_path):
    cfg = LyraConfig(d_model=32, pgc_expansions=[0.5], n_s4d=2, bidirectional=True, pooling="max")
    model = Lyra.from_config(cfg.to_dict())
    assert model.config == cfg and model.config.pgc_expansions == (0.5,)
    path = tmp_path / "ck.pt"
    torch.save({"model_config": cfg.to_dict(), "state_dict": model.state_dict()}, path)
    ck = torch.load(path, weights_only=True)
    clone = Lyra.from_config(ck["model_config"])
    clone.load_state_dict(ck["state_dict"])
    x = torch.randn(2, 9, 20)
    model.eval(), clone.eval()
    torch.testing.assert_close(model(x), clone(x))
    with pytest.raises(ConfigError, match="d_hidden"):
        LyraConfig.from_dict({"d_hidden": 3})
    with pytest.raises(ConfigError, match="d_hidden"):
        Lyra(d_hidden=3)
    with pytest.raises(ConfigError, match="pooling"):
        LyraConfig(pooling="sum")
    with pytest.raises(ConfigError, match="kernel_size"):
        LyraConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="model.d_model: expected an integer"):
        LyraConfig.from_dict({"d_model": "64"})
    with pytest.raises(ConfigError, match="model.dropout: expected a number"):
        LyraConfig.from_dict({"dropout": "1e-3"})
    with pytest.raises(ConfigError, match="pgc_expansions"):
        LyraConfig.from_dict({"pgc_expansions": 2.0})
    with pytest.raises(ConfigError, match="bidirectional"):
        LyraConfig.from_dict({"bidirectional": "yes"})
    assert LyraConfig.from_dict({"pgc_expansions": [1, 0.5], "dropout": 0}).pgc_expansions == (1.0, 0.5)
    assert LyraConfig(pgc_expansions=[]).pgc_expansions == ()  # no PGC layer at all is allowed


def test_default_init_is_s4d_lin():
    k = Lyra().s4ds[0].s4d.kernel
    torch.testing.assert_close(k.log_A_real.exp(), torch.full((64, 32), 0.5))
    torch.testing.assert_close(k.A_imag[3], math.pi * torch.arange(32.0))
    dt = k.log_dt.exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert k.C.shape == (64, 32, 2)


def test_fft_size_is_a_fast_length_of_at_least_2L():
    for n in (2, 4, 6, 112, 474, 2 * 65536, 2 * 16383 + 2, 8194):
        m = fft_size(n)
        assert n <= m < 2 * n and m % 2 == 0
        assert m & (m - 1) == 0 or ((m // 3) & (m // 3 - 1) == 0 and m % 3 == 0)  # 2^k or 3 * 2^k
    assert fft_size(112) == 128 and fft_size(2048) == 2048 and fft_size(8194) == 12288


# ---- S4D against its definition ----------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 7, 16, 33, 101])
def test_s4d_fft_path_equals_recurrence(L):
    gen = torch.Generator().manual_seed(L)
    layer = S4D(d_model=6, d_state=8)
    randomise_(layer.kernel, gen)
    layer.kernel.chunk = 8  # L=101 spans 13 chunks
    u = torch.randn(3, 6, L, generator=gen)
    with torch.no_grad():
        y = layer.ssm(u)  # (B, H, L), includes D u
    ref = recurrence(layer.kernel, u) + layer.D.detach().double()[:, None] * u.double()
    assert y.shape == (3, 6, L)
    assert rel_err(y, ref) < 1e-4


@pytest.mark.parametrize("L,chunk", [(1, None), (50, None), (257, None), (257, 16), (1000, 7)])
def test_chunked_kernel_equals_naive_vandermonde(L, chunk):
    gen = torch.Generator().manual_seed(0)
    kernel = S4DKernel(5, d_state=16)
    randomise_(kernel, gen)
    kernel.chunk = chunk
    with torch.no_grad():
        K = kernel(L)
        ref = naive_kernel(kernel, L)
    assert K.shape == (5, L) and K.dtype == torch.float32
    assert rel_err(K, ref) < 1e-5


def test_long_fft_convolution_does_not_wrap_around():
    # a slowly decaying kernel over L = 3000: circular convolution would leak the sequence end into its start
    gen = torch.Generator().manual_seed(1)
    layer = S4D(d_model=2, d_state=4)
    with torch.no_grad():
        layer.kernel.log_dt.fill_(math.log(1e-3))
    u = torch.randn(1, 2, 3000, generator=gen)
    with torch.no_grad():
        y = layer.ssm(u)
        K = layer.kernel(3000)
    ref = causal_conv(u, K) + layer.D.detach().double()[:, None] * u.double()
    assert rel_err(y, ref) < 1e-4


@pytest.mark.parametrize("L", [1, 12, 37])
def test_bidirectional_is_causal_plus_reversed_pass(L):
    gen = torch.Generator().manual_seed(3)
    layer = S4D(d_model=4, d_state=8, bidirectional=True)
    randomise_(layer.kernel, gen)
    u = torch.randn(2, 4, L, generator=gen)
    with torch.no_grad():
        y = layer.ssm(u)
        K = layer.kernel(L)  # (2H, L): forward kernels, then backward kernels
    fwd = causal_conv(u, K[:4])
    bwd = causal_conv(u.flip(-1), K[4:]).flip(-1)
    ref = fwd + bwd + layer.D.detach().double()[:, None] * u.double()
    assert rel_err(y, ref) < 1e-4
    # and the backward part is really there: it differs from the causal-only output
    assert rel_err(fwd + layer.D.detach().double()[:, None] * u.double(), ref) > 1e-2


# ---- the whole model ---------------------------------------------------------------------------------


def reference_forward(model: Lyra, u: torch.Tensor) -> torch.Tensor:
    """A plain float64 transcription of the authors' forward (lyra-notes 2.1-2.4), for comparison."""
    P = {k: v.detach().double() for k, v in model.state_dict().items()}
    u = u.double()

    def rms(x, w):  # eps outside the sqrt, as in the official RMSNorm
        return w * x / (x.norm(dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + 1e-8)

    x = u @ P["encoder.weight"].T + P["encoder.bias"]
    for i, pgc in enumerate(model.pgcs):
        p = f"pgcs.{i}."
        h = rms(x @ P[p + "in_linear.weight"].T + P[p + "in_linear.bias"], P[p + "in_norm.weight"])
        xx, v = h[..., : pgc.e], h[..., pgc.e:]
        c = torch.nn.functional.conv1d(xx.transpose(1, 2), P[p + "conv.weight"], P[p + "conv.bias"],
                                       padding=pgc.conv.padding[0], groups=pgc.e).transpose(1, 2)
        x = rms((v * c) @ P[p + "out_linear.weight"].T + P[p + "out_linear.bias"], P[p + "out_norm.weight"])
    L = x.shape[1]
    for i, block in enumerate(model.s4ds):
        p = f"s4ds.{i}."
        z = rms(x, P[p + "norm.weight"]).transpose(1, 2)  # (B, H, L)
        K = naive_kernel(block.s4d.kernel, L)  # (H, L)
        y = torch.fft.irfft(torch.fft.rfft(z, n=2 * L) * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
        y = torch.nn.functional.gelu(y + P[p + "s4d.D"][:, None] * z)
        W = P[p + "s4d.output_linear.weight"]  # the 1x1 Conv1d H -> 2H
        y = torch.nn.functional.conv1d(y, W[:, :, None], P[p + "s4d.output_linear.bias"])  # (B, 2H, L)
        x = x + torch.nn.functional.glu(y, dim=1).transpose(1, 2)
    return x.mean(1) @ P["decoder.weight"].T + P["decoder.bias"]


def test_forward_matches_plain_reference():
    torch.manual_seed(0)
    model = Lyra().eval()  # the default 47,169-parameter model
    u = torch.eye(20)[torch.randint(0, 20, (6, 57))]
    ref = reference_forward(model, u)
    with torch.no_grad():
        fast = model(u)  # inference path: pieces, oneDNN linears, cached kernel
    slow = model(u)  # autograd path
    assert rel_err(fast, ref) < 1e-4 and rel_err(slow, ref) < 1e-4


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pooling="mean"),
        dict(pooling="max"),
        dict(pooling="first"),
        dict(pooling="mean", bidirectional=True, n_s4d=2),
        dict(pooling="max", bidirectional=True, kernel_size=5),
        dict(token_level=True, bidirectional=True),
    ],
)
def test_padding_does_not_change_output(kwargs):
    torch.manual_seed(0)
    model = Lyra(d_input=4, d_model=16, d_state=8, **kwargs).eval()
    lengths = [5, 11, 8, 1]
    L = 14
    x = torch.zeros(len(lengths), L, 4)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    singles = []
    for i, n in enumerate(lengths):
        xi = torch.eye(4)[torch.randint(0, 4, (n,))]  # (n, 4)
        x[i, :n], mask[i, :n] = xi, True
        with torch.no_grad():
            singles.append(model(xi[None]))
    # garbage in the padded positions must not matter either
    x = x + (~mask)[..., None] * torch.randn(len(lengths), L, 4)
    with torch.no_grad():
        batch = model(x, mask)
        unmasked = model(x)
    for i, n in enumerate(lengths):
        if model.config.token_level:
            assert batch.shape == (4, L, 1)
            torch.testing.assert_close(batch[i, :n], singles[i][0], rtol=1e-4, atol=1e-5)
            assert (batch[i, n:] == 0).all()
        else:
            torch.testing.assert_close(batch[i], singles[i][0], rtol=1e-4, atol=1e-5)
    if model.config.pooling != "first" or model.config.bidirectional:
        assert not torch.allclose(batch, unmasked, atol=1e-4)  # the mask is what makes it work


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(bidirectional=True, n_s4d=2, kernel_size=5, pgc_expansions=(0.5, 2.0, 1.0)),
     dict(token_level=True, pooling="max")],
)
def test_inference_pieces_equal_whole_batch(kwargs):
    # without autograd the model runs in slices of sequences, PGC windows with halos, S4D channel groups
    torch.manual_seed(0)
    model = Lyra(d_input=4, d_model=8, d_state=4, **kwargs).eval()
    x = torch.randn(5, 300, 4)
    mask = torch.ones(5, 300, dtype=torch.bool)
    mask[1, 170:] = False
    mask[3, 40:] = False
    with torch.enable_grad():  # autograd on: one piece, no cache
        whole = model(x, mask)
    # slices of sequences, and windows along L (even narrower than the halo)
    for chunk, window in ((10, 1), (64, 5), (100, 64), (700, 100), (3000, 8192)):
        model.inference_chunk, model.inference_window = chunk, window
        with torch.no_grad():
            torch.testing.assert_close(model(x, mask), whole, rtol=1e-4, atol=1e-5)


def test_onednn_linear_matches_torch_linear():
    torch.manual_seed(0)
    lin = Linear(64, 96)
    x = torch.randn(3, 50, 64)
    xt = torch.randn(3, 64, 50).transpose(1, 2)  # strided input, as in the S4D output stage
    with torch.no_grad():
        for inp in (x, xt):
            torch.testing.assert_close(lin(inp), torch.nn.functional.linear(inp, lin.weight, lin.bias))
    y = lin(x)  # with autograd: torch's path, gradients flow
    y.sum().backward()
    assert lin.weight.grad is not None


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Lyra(d_input=20, d_model=16, d_state=8, bidirectional=True, n_s4d=2, dropout=0.1).train()
    x = torch.eye(20)[torch.randint(0, 20, (8, 30))]
    mask = torch.ones(8, 30, dtype=torch.bool)
    mask[:3, 20:] = False
    model(x, mask).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_token_level_shape():
    model = Lyra(d_input=4, d_output=3, d_model=8, d_state=4, token_level=True)
    assert model(torch.randn(2, 17, 4)).shape == (2, 17, 3)
    assert Lyra(d_input=4, d_output=3, d_model=8, d_state=4)(torch.randn(2, 17, 4)).shape == (2, 3)


def test_tiny_model_overfits_random_sequences():
    torch.manual_seed(0)
    x = torch.eye(20)[torch.randint(0, 20, (64, 16))]  # (64, 16, 20)
    y = torch.randn(64, 1)
    model = Lyra(d_input=20, d_model=16, d_state=8, dropout=0.0)
    opt = configure_optimizer(model, lr=1e-2, weight_decay=0.0, ssm_lr=1e-2)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5
    assert losses[-1] < 0.05, losses[-1]


def test_optimizer_groups():
    model = Lyra(d_model=16, d_state=8, n_s4d=2, ssm_lr=3e-4)
    opt = configure_optimizer(model, lr=1e-2, weight_decay=0.05)
    rest, ssm = opt.param_groups
    assert (rest["lr"], rest["weight_decay"]) == (1e-2, 0.05)
    assert (ssm["lr"], ssm["weight_decay"]) == (3e-4, 0.0)
    assert len(ssm["params"]) == 6  # (log_dt, Re A, Im A) x 2 layers
    assert {id(p) for p in ssm["params"]} == {id(p) for p in ssm_parameters(model)}
    assert len(rest["params"]) + len(ssm["params"]) == len(list(model.parameters()))
    assert configure_optimizer(model, ssm_lr=1e-4).param_groups[1]["lr"] == 1e-4


def test_eval_kernel_cache_used_and_invalidated(monkeypatch):
    torch.manual_seed(0)
    model = Lyra(d_input=4, d_model=8, d_state=4).eval()
    layer = model.s4ds[0].s4d
    calls = []
    original = S4DKernel.forward
    monkeypatch.setattr(S4DKernel, "forward", lambda self, L: calls.append(L) or original(self, L))
    x = torch.randn(2, 10, 4)
    with torch.no_grad():
        y0 = model(x)
        model(x)
    assert calls == [10]  # second call hit the cache
    with torch.no_grad():
        model(torch.randn(2, 12, 4))
    assert calls == [10, 12]  # another length: new kernel
    with torch.no_grad():
        model(x)
    assert calls == [10, 12]

    assert set(layer._cache) == {(10, fft_size(20)), (12, fft_size(24))}  # several lengths stay cached
    model.train()
    assert not layer._cache
    model.eval()
    # an optimiser step changes the kernel parameters in place: the cache must notice
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()  # eval + grad enabled: no cache, gradients flow
    opt.step()
    n = len(calls)
    with torch.no_grad():
        y1 = model(x)
    assert len(calls) == n + 1
    assert not torch.allclose(y0, y1)
    # load_state_dict (in-place copy) invalidates too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["s4ds.0.s4d.kernel.log_dt"] += 0.3
    model.load_state_dict(state)
    with torch.no_grad():
        y2 = model(x)
    assert len(calls) == n + 2 and not torch.allclose(y1, y2)


def test_no_cache_in_training_mode(monkeypatch):
    model = Lyra(d_input=4, d_model=8, d_state=4).train()
    calls = []
    original = S4DKernel.forward
    monkeypatch.setattr(S4DKernel, "forward", lambda self, L: calls.append(L) or original(self, L))
    with torch.no_grad():
        model(torch.randn(2, 10, 4))
        model(torch.randn(2, 10, 4))
    assert calls == [10, 10]


def test_bf16_autocast_on_cpu_forward_backward():
    torch.manual_seed(0)
    model = Lyra(d_input=20, d_model=16, d_state=8, bidirectional=True)
    x = torch.eye(20)[torch.randint(0, 20, (4, 33))]
    mask = torch.ones(4, 33, dtype=torch.bool)
    mask[0, 20:] = False
    ref = model.eval()(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, mask)
        model.train()
        loss = model(x, mask).float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(loss)
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)  # bf16 is close, not equal
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
