"""What the console shows after a workflow run: the one-line reason of each failed job and the
warnings of the jobs that ran, read back from the stages' log files (results/<campaign>/logs/).

The jobs write their logs on whichever machine ran them (a cluster node, on a shared filesystem), so
Snakemake's own console only says "check log file(s)"; the Snakefile's onerror/onsuccess handlers call
these to put the reason where the user looks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# `lyra` stages log as "HH:MM:SS LEVEL logger: message" (lyra/cli.py) and end a failed run with
# "error: message" on stderr, which the rules send to the same log file.
_WARNING = re.compile(r"^\d\d:\d\d:\d\d WARNING [\w.]+: (.*)$")


def _logs_since(log_dir: str | os.PathLike, since: float) -> list[Path]:
    root = Path(log_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.log") if p.is_file() and p.stat().st_mtime >= since - 1)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def job_errors(log_dir: str | os.PathLike, since: float) -> list[str]:
    """`<log>: error: ...` for each log written since `since` (epoch seconds) that ends in a failure:
    the stage's own one-line error, or the last line of an unexpected traceback."""
    out = []
    for path in _logs_since(log_dir, since):
        lines = [line for line in _lines(path) if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        if errors:
            out.append(f"{path}: {errors[-1]}")
        elif any(line.startswith("Traceback (most recent call last)") for line in lines):
            out.append(f"{path}: error: {lines[-1].strip()} (a bug: the traceback is in this log)")
        elif lines and lines[-1].endswith("command not found"):  # the job's environment lacks the project
            out.append(f"{path}: error: {lines[-1].split(': ', 1)[-1]} (install this project where the jobs run)")
    return out


def job_warnings(log_dir: str | os.PathLike, since: float) -> list[str]:
    """`warning: ... (<log>)` for each distinct warning logged since `since`, in log order."""
    seen: dict[str, Path] = {}
    for path in _logs_since(log_dir, since):
        for line in _lines(path):
            m = _WARNING.match(line)
            if m and m.group(1) not in seen:
                seen[m.group(1)] = path
    return [f"warning: {message} ({path})" for message, path in seen.items()]
