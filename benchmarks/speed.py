"""Lyra speed on this machine: throughput, and long-sequence latency and memory against a Transformer.

    python benchmarks/speed.py [--quick] [--repeats N] [--write-docs]

(a) Throughput in sequences/s of the default Lyra (47,169 parameters) in eval mode under
    torch.inference_mode, at L = 56 (GB1, batch 4,096) and L = 237 (GFP, batch 1,024): best of N calls
    after one warm-up call.
(b) Forward latency and peak memory at batch 1 and L = 1,024 ... 65,536, for Lyra and for a same-width
    torch.nn.TransformerEncoder (d_model 64, 4 heads, 2 layers, dim_feedforward 128) with the same linear
    encoder, mean pool and decoder. Each configuration runs in a fresh child process: "cold" is the first
    call (Lyra generates and caches its kernel), "warm" the best of the next calls. Peak memory is the
    child's peak resident set size during those calls minus its resident set just before them (the
    high-water mark is reset through /proc/self/clear_refs; without it, ru_maxrss is used). Transformer
    configurations whose attention matrices (heads x L^2 float32) would exceed 8 GB are skipped.

Process settings (on unless --no-tuning; the children inherit them): OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE: spinning threads collapse throughput 10-30x when other processes share the
cores) and glibc malloc keeps freed memory instead of trimming it back to the OS (mallopt M_TRIM_THRESHOLD
1 GB, M_MMAP_THRESHOLD 32 MB: otherwise every fresh tensor is page-faulted in again). The thread count is
torch's default. Both settings are process-wide deployment choices, not model changes: run once with and
once with --no-tuning to see their effect.

--quick runs fewer repeats and only L <= 4,096 in (b). --write-docs replaces the `## Speed` section of
docs/benchmarks.md with the tables (other sections are kept).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

TUNED = "--no-tuning" not in sys.argv
if TUNED:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when OpenMP starts, i.e. at `import torch`

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lyra import Lyra  # noqa: E402
from lyra.io import write_text  # noqa: E402

THROUGHPUT = [(56, 4096), (237, 1024)]  # (L, batch): GB1 and GFP lengths
LENGTHS = [1024, 4096, 16384, 65536]
ATTENTION_LIMIT = 8e9  # bytes
HEADS = 4
TARGETS = "targets: >= 15,000 seq/s at L=56; Lyra >= 50x faster than the Transformer at L=16,384; " \
          "L=65,536 forward < 0.5 s and < 1 GB"


class TransformerPeer(nn.Module):
    """The quadratic peer: same width, encoder, pooling and decoder as Lyra; attention instead of PGC+S4D."""

    def __init__(self, d_input: int = 20, d_model: int = 64, n_layers: int = 2):
        super().__init__()
        self.encoder = nn.Linear(d_input, d_model)
        layer = nn.TransformerEncoderLayer(d_model, HEADS, dim_feedforward=128, dropout=0.2, batch_first=True)
        self.body = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.body(self.encoder(x)).mean(1))  # (B, 1)


def tune_malloc() -> bool:
    """glibc: keep up to 1 GB of freed heap and serve tensors up to 32 MB from it (no re-faulting)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))


MALLOC_TUNED = TUNED and tune_malloc()


def build(kind: str) -> nn.Module:
    return (Lyra() if kind == "lyra" else TransformerPeer()).eval()


def one_hot(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(20)[torch.randint(0, 20, (batch, length), generator=g)]  # (B, L, 20)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- (a) throughput -----------------------------------------------------------------------------------


def throughput(length: int, batch: int, repeats: int) -> dict:
    model, x = build("lyra"), one_hot(batch, length)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up: kernel cache, allocator, thread pool
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"L": length, "batch": batch, "best_s": times[0], "median_s": times[len(times) // 2],
            "seq_per_s": batch / times[0], "median_seq_per_s": batch / times[len(times) // 2]}


# ---- (b) latency and memory, one child process per configuration -------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(kind: str, length: int, repeats: int) -> dict:
    """Runs inside the fresh process: time the forward and measure its peak resident memory."""
    model, x = build(kind), one_hot(1, length)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss"
    rss0 = _status_kb("VmRSS")
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            warm.append(time.perf_counter() - t0)
    peak = _status_kb("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "L": length, "cold_s": cold, "warm_s": min(warm),
            "peak_mb": max(0, peak - rss0) / 1024, "memory_method": method}


def run_child(kind: str, length: int, repeats: int, timeout: float) -> dict:
    est = HEADS * length**2 * 4
    if kind == "transformer" and est > ATTENTION_LIMIT:
        return {"kind": kind, "L": length, "skipped": f"skipped: est. {est / 1e9:.0f} GB attention"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(length), "--repeats", str(repeats)]
    cmd += [] if TUNED else ["--no-tuning"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "L": length, "skipped": f"timed out after {timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        return {"kind": kind, "L": length, "skipped": f"failed: {e.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report -------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return {"date": datetime.date.today().isoformat(), "nproc": os.cpu_count(), "cpu": cpu,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load": os.getloadavg()[0],
            "settings": f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
                        f"glibc malloc {'tuned' if MALLOC_TUNED else 'default'}"}


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:,.1f}" if s < 10 else f"{s * 1e3:,.0f}"


def render(info: dict, tput: list[dict], lat: list[dict], command: str) -> str:
    lines = [
        f"Measured {info['date']} on {info['nproc']} CPU cores ({info['cpu']}), torch {info['torch']} "
        f"({info['threads']} intra-op threads, the default), Python {info['python']}; no GPU. "
        f"Process settings: {info['settings']}. Command: `{command}`. The machine is shared with other "
        f"jobs (1-minute load average {info['load']:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"on {info['nproc']} cores), so numbers are noisy: best of the repeats.",
        "",
        f"### Throughput (Lyra, {n_params(build('lyra')):,} parameters, eval, `torch.inference_mode`)",
        "",
        "| L | batch | best (s) | sequences/s (best) | sequences/s (median) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in tput:
        lines.append(f"| {r['L']} | {r['batch']:,} | {r['best_s']:.3f} | {r['seq_per_s']:,.0f} | "
                     f"{r['median_seq_per_s']:,.0f} |")
    lines += [
        "",
        f"### Latency and peak memory, batch 1 (Transformer peer: {n_params(build('transformer')):,} parameters)",
        "",
        "| L | Lyra cold (ms) | Lyra warm (ms) | Lyra peak (MB) | Transformer (ms) | Transformer peak (MB) | "
        "Transformer / Lyra (warm) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["kind"], r["L"]): r for r in lat}
    for L in sorted({r["L"] for r in lat}):
        ly, tr = by.get(("lyra", L), {}), by.get(("transformer", L), {})
        cells = [f"{L:,}"]
        cells += [ly["skipped"], "", ""] if "skipped" in ly else \
            [fmt_ms(ly["cold_s"]), fmt_ms(ly["warm_s"]), f"{ly['peak_mb']:,.0f}"]
        if "skipped" in tr:
            cells += [tr["skipped"], "", ""]
        else:
            ratio = tr["warm_s"] / ly["warm_s"] if "warm_s" in ly else float("nan")
            cells += [fmt_ms(tr["warm_s"]), f"{tr['peak_mb']:,.0f}", f"{ratio:,.0f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    method = next((r["memory_method"] for r in lat if "memory_method" in r), "n/a")
    lines += ["", f"Peak memory = peak resident set of a fresh process during the calls minus its resident set "
              f"just before them ({method}). Transformer latency is warm (best of the repeats).", "",
              f"Targets ({TARGETS}): " + ", ".join(check_targets(tput, lat)) + "."]
    return "\n".join(lines) + "\n"


def check_targets(tput: list[dict], lat: list[dict]) -> list[str]:
    out = []
    t56 = next((r for r in tput if r["L"] == 56), None)
    if t56:
        out.append(f"L=56 {t56['seq_per_s']:,.0f} seq/s {'met' if t56['seq_per_s'] >= 15000 else 'NOT met'}")
    by = {(r["kind"], r["L"]): r for r in lat}
    ly, tr = by.get(("lyra", 16384), {}), by.get(("transformer", 16384), {})
    if "warm_s" in ly and "warm_s" in tr:
        ratio = tr["warm_s"] / ly["warm_s"]
        out.append(f"L=16,384 {ratio:,.0f}x {'met' if ratio >= 50 else 'NOT met'}")
    ly = by.get(("lyra", 65536), {})
    if "cold_s" in ly:
        ok = ly["cold_s"] < 0.5 and ly["peak_mb"] < 1024
        out.append(f"L=65,536 {ly['cold_s']:.2f} s cold / {ly['warm_s']:.2f} s warm, {ly['peak_mb']:,.0f} MB "
                   f"{'met' if ok else 'NOT met'}")
    return out


def write_docs(section: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace (or append) the `## Speed` section, keeping every other section."""
    body = "## Speed\n\n" + section
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    m = re.search(r"^## Speed[ \t]*\n.*?(?=^## |\Z)", text, re.M | re.S)
    text = text[: m.start()] + body + "\n" + text[m.end():] if m else text.rstrip("\n") + "\n\n" + body
    write_text(path, text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats; latency only up to L=4,096")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per configuration (default 5, quick 2)")
    p.add_argument("--write-docs", action="store_true", help="replace the ## Speed section of docs/benchmarks.md")
    p.add_argument("--timeout", type=float, default=900, help="seconds per latency child process")
    p.add_argument("--child", nargs=2, metavar=("KIND", "L"), help=argparse.SUPPRESS)
    p.add_argument("--no-tuning", action="store_true", help="default OpenMP wait policy and glibc malloc")
    args = p.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), max(1, min(repeats, 3)))))
        return

    info = machine()
    tput = []
    for L, B in THROUGHPUT:
        tput.append(throughput(L, B, repeats))
        print(f"throughput L={L} B={B}: {tput[-1]['seq_per_s']:,.0f} seq/s", file=sys.stderr, flush=True)
    lat = []
    for L in [n for n in LENGTHS if not args.quick or n <= 4096]:
        for kind in ("lyra", "transformer"):
            lat.append(run_child(kind, L, repeats, args.timeout))
            print(f"latency {kind} L={L}: {lat[-1]}", file=sys.stderr, flush=True)
    command = "python benchmarks/speed.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    section = render(info, tput, lat, command)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
