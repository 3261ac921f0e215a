"""Issue 7, hardening: bad configs through the real `lyra` command line, shell safety of the Snakemake
rules, untrusted checkpoints, a 65,536-long sequence, and a workflow killed mid-run.

The bad-data corpus (tests/test_bad_inputs.py), the training SIGKILL/resume test (tests/test_train.py),
the tuning concurrency and killed-worker tests (tests/test_tune.py) and the 10M-variant library benchmark
(benchmarks/library.py) live elsewhere; docs/reliability.md lists every promise with its test.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
BAD_CONFIGS = TESTS / "bad_configs"
BIN = Path(sys.executable).parent  # the venv's `lyra` and `snakemake` sit next to its python
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) \S+: ")  # the CLI's logging format


def lyra(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lyra"), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr without the log records: what the user is told."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)]


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if not p.is_dir()}


def names_key(message: str, key: str) -> bool:
    """`key` appears as a whole dotted name (so 'campaign' is not found in 'missing_campaign.yaml')."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


# ----------------------------------------------------------------------------------------------------
# 1. bad configs through the CLI (tests/bad_configs/cases.yaml)

CASES = yaml.safe_load((BAD_CONFIGS / "cases.yaml").read_text())["cases"]


def _params():
    for case in CASES:
        for command in case.get("commands", ["check-config"]):
            reason = (case.get("xfail") or {}).get(command)
            marks = [pytest.mark.xfail(strict=True, reason=" ".join(reason.split()))] if reason else []
            if command == "run":  # the same checks as preprocess, plus every later stage's imports
                marks.append(pytest.mark.slow)
            extra = "".join(a for a in case.get("args", []) if not a.startswith("--"))
            yield pytest.param(case, command, marks=marks, id=f"{command}-{case['file']}{extra and '-' + extra}")


def test_every_bad_config_is_a_case():
    listed = {c["file"] for c in CASES}
    on_disk = {p.name for p in BAD_CONFIGS.glob("*.yaml")} - {"cases.yaml"}
    assert on_disk <= listed, f"configs without a case: {sorted(on_disk - listed)}"
    assert len(CASES) >= 30


@pytest.mark.parametrize("case, command", list(_params()))
def test_bad_config(case, command, tmp_path):
    shutil.copytree(BAD_CONFIGS, tmp_path / "bad_configs")
    shutil.copytree(TESTS / "bad_inputs", tmp_path / "bad_inputs")
    before = files_under(tmp_path)
    args = [command, "--config", case["file"], *case.get("args", [])]
    if command == "preprocess":
        args += ["--out", str(tmp_path / "out" / "dataset.parquet"), "--report", str(tmp_path / "out" / "report.md")]
    elif command == "run":
        args += ["--results", str(tmp_path / "results")]

    proc = lyra(*args, cwd=tmp_path / "bad_configs")

    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    line = lines[0]
    if "error" in case:
        assert case["error"] in line, line
    if "key" in case:
        assert names_key(line, case["key"]), f"{case['key']!r} not named in: {line}"
    if "row" in case:
        assert f", row {case['row']}:" in line, line
    named = case.get("names", Path(case["file"]).name)
    if named is not None:
        assert named in line, f"{named!r} not named in: {line}"
    new = files_under(tmp_path) - before
    assert not new, f"files left behind: {sorted(map(str, new))}"


def test_library_larger_than_max_size_is_rejected():
    """library_too_large.yaml: counted without enumerating, and scoring refuses it with one line."""
    from lyra.design import library as lib
    from lyra.campaign.config import resolve_config
    from lyra.errors import ConfigError
    from lyra.data.variants import read_wild_type

    raw = yaml.safe_load((BAD_CONFIGS / "library_too_large.yaml").read_text())
    config = resolve_config(raw, base_dir=BAD_CONFIGS, source="library_too_large.yaml")
    cfg = lib.LibraryConfig.from_dict(config["library"])
    wild_type = read_wild_type(str(TESTS / "bad_inputs" / "wt.fasta"))
    assert len(wild_type) == 30
    t0 = time.perf_counter()
    assert lib.library_size(cfg, wild_type) == 20**30 - 1  # every non-WT combination at 30 sites
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ConfigError) as info:
        next(iter(lib.iter_library(cfg, wild_type)))
    message = str(info.value)
    assert "\n" not in message and "library.max_size = 1,000,000" in message, message
    # the same library within its limit is accepted
    small = lib.LibraryConfig.from_dict({**config["library"], "positions": [2, 3], "max_size": 1000})
    assert lib.library_size(small, wild_type) == 20 * 20 - 1
    assert sum(len(chunk) for chunk in lib.iter_library(small, wild_type)) == 20 * 20 - 1


@pytest.mark.slow
def test_run_refuses_a_too_large_library_without_partial_shards(tmp_path):
    """`lyra run` on library_too_large.yaml: one line naming library.max_size, refused before any stage
    runs (nothing trained, no shard written)."""
    shutil.copytree(BAD_CONFIGS, tmp_path / "bad_configs")
    shutil.copytree(TESTS / "bad_inputs", tmp_path / "bad_inputs")
    tiny = ["tune.enabled=false", "train.seeds=1", "train.max_epochs=1", "train.batch_size=4", "train.device=cpu",
            "model.d_model=8", "model.d_state=4"]
    proc = lyra("run", "--config", "library_too_large.yaml", "--results", str(tmp_path / "results"),
                *[a for s in tiny for a in ("--set", s)], cwd=tmp_path / "bad_configs", timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: library_too_large.yaml: library: "), proc.stderr
    assert "exceed library.max_size = 1,000,000" in lines[0]
    campaign = tmp_path / "results" / "hardening"
    assert not (campaign / "models").exists()  # checked before training, not after
    assert not list(campaign.rglob("shard*")) and not list(campaign.rglob("*.tmp")), files_under(campaign)


# ----------------------------------------------------------------------------------------------------
# 2. shell safety: no config value or file name reaches a shell unquoted

WORKFLOW_FILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
SAFE_CONSTRAINT = re.compile(r"\\d\+|\[0-9\]\+|[\w|]+")  # digits only, or a list of plain words
TRIVIA = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)


def _workflow_tokens(path: Path) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))


def _strings_after(tokens: list[tokenize.TokenInfo], i: int) -> tuple[str, int]:
    """The implicitly concatenated string literals starting at token i, and the index past them."""
    parts = []
    while i < len(tokens) and (tokens[i].type in TRIVIA or tokens[i].type == tokenize.STRING):
        t = tokens[i]
        if t.type == tokenize.STRING:
            # Python fills an f-string before Snakemake sees it: no `:q` can quote those values
            assert "f" not in t.string.split(t.string[-1])[0].lower(), f"line {t.start[0]}: f-string {t.string}"
            parts.append(ast.literal_eval(t.string))
        i += 1
    return "".join(parts), i


def _rule_name(tokens: list[tokenize.TokenInfo], i: int) -> str | None:
    """The name if tokens i.. read `rule NAME:` (or `checkpoint NAME:`)."""
    t = tokens[i]
    if (t.type == tokenize.NAME and t.string in ("rule", "checkpoint") and i + 2 < len(tokens)
            and tokens[i + 1].type == tokenize.NAME and tokens[i + 2].string == ":"):
        return tokens[i + 1].string
    return None


def shell_commands() -> list[tuple[str, str, str]]:
    """(file, rule, command) for every `shell:` directive and `shell("...")` call in the workflow."""
    found = []
    for path in WORKFLOW_FILES:
        tokens = _workflow_tokens(path)
        rule = "(top level)"
        for i, t in enumerate(tokens[:-1]):
            rule = _rule_name(tokens, i) or rule
            if t.type == tokenize.NAME and t.string == "shell" and tokens[i + 1].string in (":", "("):
                command, _ = _strings_after(tokens, i + 2)
                found.append((path.name, rule, command))
    return found


def wildcard_constraints() -> dict[str, dict[str, str]]:
    """rule -> {wildcard: regex} from `wildcard_constraints:` blocks and `{name,regex}` patterns;
    the key '*' holds the global ones."""
    out: dict[str, dict[str, str]] = {"*": {}}
    for path in WORKFLOW_FILES:
        tokens = _workflow_tokens(path)
        rule = "*"
        for i, t in enumerate(tokens):
            if _rule_name(tokens, i):
                rule = _rule_name(tokens, i)
                out.setdefault(rule, {})
            if t.type == tokenize.NAME and t.string == "wildcard_constraints" and tokens[i + 1].string == ":":
                scope = rule if t.start[1] > 0 else "*"  # indented: inside a rule
                j = i + 2
                while True:  # name="regex", ... up to the next directive
                    while j < len(tokens) and (tokens[j].type in TRIVIA or tokens[j].string == ","):
                        j += 1
                    if j + 1 >= len(tokens) or tokens[j].type != tokenize.NAME or tokens[j + 1].string != "=":
                        break
                    name = tokens[j].string
                    regex, j = _strings_after(tokens, j + 2)
                    out.setdefault(scope, {})[name] = regex
            if t.type == tokenize.STRING and rule != "*":
                try:
                    text = ast.literal_eval(t.string)
                except (ValueError, SyntaxError):  # an f-string
                    continue
                for name, regex in re.findall(r"\{(\w+)\s*,\s*([^{}]+)\}", str(text)):
                    out[rule][name] = regex
    return out


def _placeholders(command: str) -> list[tuple[str, str]]:
    """(field, format spec) of every `{...}` in a Snakemake shell string (`{{` is a literal brace)."""
    return [(field, spec or "") for _, field, spec, _ in string.Formatter().parse(command) if field is not None]


def test_workflow_has_shell_commands_to_check():
    commands = shell_commands()
    rules = {rule for _, rule, _ in commands}
    assert {"preprocess", "train", "tune_worker", "tune_collect", "score_shard", "rank"} <= rules, rules
    # the parser sees what the rule says, e.g. the preprocess command in full
    (cmd,) = [c for _, r, c in commands if r == "preprocess"]
    assert cmd.startswith("lyra preprocess --config {input.cfg:q}"), cmd


def test_shell_placeholders_are_quoted():
    """Every {input}, {output}, {params}, {log} (and {config}) in a shell string is shell-quoted (`:q`)."""
    unquoted = []
    for file, rule, command in shell_commands():
        for field, spec in _placeholders(command):
            head = re.split(r"[.\[]", field, maxsplit=1)[0]
            if head in ("threads", "resources", "wildcards"):  # integers; wildcards: the next test
                continue
            if spec != "q":
                unquoted.append(f"{file} rule {rule}: {{{field}{':' + spec if spec else ''}}}")
    assert not unquoted, "unquoted placeholders:\n" + "\n".join(unquoted)


def test_shell_wildcards_are_quoted_or_digits_only():
    constraints = wildcard_constraints()
    unsafe = []
    for file, rule, command in shell_commands():
        for field, spec in _placeholders(command):
            if not field.startswith("wildcards.") or spec == "q":
                continue
            name = field.split(".", 1)[1]
            regex = constraints.get(rule, {}).get(name) or constraints["*"].get(name)
            if regex is None or not SAFE_CONSTRAINT.fullmatch(regex):
                unsafe.append(f"{file} rule {rule}: {{{field}}} (constraint: {regex!r})")
    assert not unsafe, "unquoted wildcards that may hold any text:\n" + "\n".join(unsafe)


def test_constraint_parser_reads_the_rules():
    """The wildcard test above can pass: it sees the constraints that rules/common.smk does declare."""
    constraints = wildcard_constraints()["*"]
    assert constraints["seed"] == constraints["worker"] == constraints["shard"] == r"\d+"


@pytest.mark.slow
def test_data_path_with_shell_syntax_runs_nothing(tmp_path):
    """A campaign whose data live under a folder named with spaces and $(...), `...` and ; runs its
    preprocess rule for real through Snakemake and executes none of it."""
    if not (BIN / "snakemake").exists():
        pytest.skip("snakemake not installed")
    weird = tmp_path / "lab data $(touch pwned) `touch pwned2` ; touch pwned3 ; 'quote"
    weird.mkdir()
    for name in ("ok.csv", "wt.fasta"):
        shutil.copy(TESTS / "bad_inputs" / name, weird / name)
    work = tmp_path / "work"
    work.mkdir()
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "campaign": "shellsafe",
        "data": {"path": str(weird / "ok.csv"), "mutations_column": "variant", "wild_type": str(weird / "wt.fasta"),
                 "target_column": "score"},
        "split": {"fractions": {"train": 0.34, "valid": 0.33, "test": 0.33}},
    }))
    target = "results/shellsafe/data/dataset.parquet"
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile",
         str(config), "--cores", "1", "--nolock", target],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (work / target).is_file()
    pwned = sorted(str(p) for p in tmp_path.rglob("pwned*")) + sorted(str(p) for p in ROOT.glob("pwned*"))
    assert not pwned, pwned
    import pandas as pd

    assert len(pd.read_parquet(work / target)) == 3  # the weird path was read, not mangled


# ----------------------------------------------------------------------------------------------------
# 3. untrusted files: checkpoints never unpickle arbitrary objects

PACKAGE_FILES = sorted((ROOT / "lyra").rglob("*.py"))


def _calls(tree: ast.AST, dotted: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def test_every_torch_load_uses_weights_only():
    n_calls, bad = 0, []
    for path in PACKAGE_FILES:
        tree = ast.parse(path.read_text())
        calls = list(_calls(tree, "torch.load"))
        for call in calls:
            value = {k.arg: k.value for k in call.keywords}.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                bad.append(f"{path.name}:{call.lineno}: {ast.unparse(call)}")
        n_calls += len(calls)
        # torch.load used any other way (passed around, imported by name) would escape the check above
        refs = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n) == "torch.load"]
        if len(refs) != len(calls):
            bad.append(f"{path.name}: torch.load referenced outside a direct call")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in [a.name for a in node.names]:
                bad.append(f"{path.name}:{node.lineno}: from torch import load")
    assert n_calls >= 2, "expected the checkpoint and resume loaders in lyra/train.py"
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


def _safe_loaders(tree: ast.Module) -> set[str]:
    """Classes in this module that subclass yaml.SafeLoader."""
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
            and any(ast.unparse(b) == "yaml.SafeLoader" for b in n.bases)} | {"yaml.SafeLoader"}


def test_package_has_no_other_unsafe_loaders():
    """No pickle, eval/exec, unsafe yaml.load, shell=True or os.system anywhere in lyra/ (yaml.load only
    with a SafeLoader subclass defined in the package)."""
    bad = []
    for path in PACKAGE_FILES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                loader = next((ast.unparse(k.value) for k in node.keywords if k.arg == "Loader"), None)
                if name == "yaml.load" and loader in _safe_loaders(tree):
                    continue
                if name in ("eval", "exec", "os.system", "os.popen", "yaml.load", "yaml.unsafe_load", "pickle.load",
                            "pickle.loads", "pd.read_pickle", "pandas.read_pickle"):
                    bad.append(f"{path.name}:{node.lineno}: {name}")
                for k in node.keywords:
                    if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                        bad.append(f"{path.name}:{node.lineno}: shell={ast.unparse(k.value)}")
                    if k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                        bad.append(f"{path.name}:{node.lineno}: allow_pickle={ast.unparse(k.value)}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n in ("pickle", "cPickle", "dill", "marshal") for n in names):
                    bad.append(f"{path.name}:{node.lineno}: imports {names}")
    assert not bad, "\n".join(bad)


class _RunsCommand:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    import torch

    payload = {"model_config": {}, "state_dict": {}, "alphabet": "protein", "targets": ["y"], "task": "regression",
               "target_transform": {"kind": "none"}, "note": _RunsCommand(marker)}
    torch.save(payload, path)


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    import torch

    from lyra.errors import LyraError
    from lyra.learn.checkpoints import load_checkpoint

    evil, marker = tmp_path / "seed0.pt", tmp_path / "pwned"
    _malicious_checkpoint(evil, marker)
    # the payload is live: a plain (unsafe) load runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(LyraError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert "\n" not in message and str(evil) in message and "not a readable Lyra checkpoint" in message, message
    assert not marker.exists()


def test_malicious_checkpoint_through_the_cli(tmp_path):
    """`lyra evaluate` on a pickle-bearing checkpoint: exit 2, one line, nothing run, no metrics file."""
    from lyra.campaign.config import resolve_config
    from lyra.campaign.stages import preprocess

    shutil.copytree(TESTS / "bad_inputs", tmp_path / "bad_inputs")
    shutil.copytree(BAD_CONFIGS, tmp_path / "bad_configs")
    config = resolve_config(yaml.safe_load((BAD_CONFIGS / "valid.yaml").read_text()),
                            base_dir=tmp_path / "bad_configs")
    dataset = preprocess(config, tmp_path / "data" / "dataset.parquet")
    evil, marker, out = tmp_path / "seed0.pt", tmp_path / "pwned", tmp_path / "metrics.json"
    _malicious_checkpoint(evil, marker)

    proc = lyra("evaluate", "--config", "valid.yaml", "--dataset", str(dataset), "--out", str(out), str(evil),
                cwd=tmp_path / "bad_configs")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(evil) in lines[0], proc.stderr
    assert not marker.exists() and not out.exists()


def test_malicious_resume_file_is_ignored_not_run(tmp_path, caplog):
    """A planted resume file (models/.seed0.resume.pt) is not unpickled: training starts over."""
    import pandas as pd

    from lyra.learn.checkpoints import load_checkpoint
    from lyra.learn.train import TrainConfig, train_model

    resume, marker = tmp_path / ".seed0.resume.pt", tmp_path / "pwned"
    _malicious_checkpoint(resume, marker)
    frame = pd.DataFrame({"variant_id": ["a", "b", "c", "d"], "sequence": ["ACDE", "ACDF", "GCDE", "ACKE"],
                          "y": [0.1, 0.5, 0.9, 0.3], "split": ["train", "train", "valid", "valid"]})
    meta = {"alphabet": "protein", "targets": ["y"], "task": "regression"}
    with caplog.at_level("WARNING", logger="lyra.learn.checkpoints"):
        result = train_model(frame, meta, {"d_model": 8, "d_state": 4}, TrainConfig(max_epochs=2, batch_size=2,
                             device="cpu"), 0, tmp_path / "seed0.pt", resume_path=resume)
    assert not marker.exists()
    assert "cannot read resume state" in caplog.text
    assert [h["epoch"] for h in result.history] == [1, 2]  # started from epoch 1
    load_checkpoint(tmp_path / "seed0.pt")  # the real checkpoint loads


# ----------------------------------------------------------------------------------------------------
# 4. scale: a 65,536-long protein trains one optimiser step on CPU in bounded memory

LONG_SEQUENCE_SCRIPT = r"""
import json, math, resource, sys, time
import numpy as np, pandas as pd, torch
from lyra.learn.checkpoints import load_checkpoint
from lyra.learn.train import TrainConfig, train_model

L, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
frame = pd.DataFrame({"variant_id": ["a", "b"], "sequence": ["".join(rng.choice(letters, L)) for _ in range(2)],
                      "y": [0.3, 1.2], "split": ["train", "valid"]})
meta = {"alphabet": "protein", "targets": ["y"], "task": "regression"}
t0 = time.perf_counter()
# default Lyra (d_model 64, d_state 64, PGC 0.25 / 2.0, one S4D), batch 1, one epoch of one row = one step
result = train_model(frame, meta, {}, TrainConfig(max_epochs=1, batch_size=1, device="cpu"), 0, out)
seconds = time.perf_counter() - t0
model, info = load_checkpoint(out)
print(json.dumps({"train_loss": result.history[0]["train_loss"], "valid_loss": result.history[0]["valid_loss"],
                  "seconds": seconds, "length": L, "d_model": info["model_config"]["d_model"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
def test_65536_long_sequence_trains_one_step_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LONG_SEQUENCE_SCRIPT, "65536", str(tmp_path / "long.pt")],
                          capture_output=True, text=True, timeout=600, env={**ENV, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"65,536-long sequence, one step: {result}")
    assert result["length"] == 65536 and result["d_model"] == 64
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["valid_loss"])
    assert result["peak_rss_mb"] < 4096, result


# ----------------------------------------------------------------------------------------------------
# 5. a workflow killed mid-run completes on rerun without redoing finished jobs


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(out[::2], out[1::2]):
        children.setdefault(int(parent), []).append(int(child))
    todo, found = [pid], []
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not hasattr(os, "killpg"), reason="needs POSIX signals")
def test_workflow_killed_during_training_resumes_without_redoing_finished_jobs(tmp_path):
    if not (BIN / "snakemake").exists():
        pytest.skip("snakemake not installed")
    # the demo campaign shrunk as in tests/test_workflow.py (loaded by path: tests/ is not a package)
    spec = importlib.util.spec_from_file_location("lyra_test_workflow", TESTS / "test_workflow.py")
    workflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workflow)
    config = workflow.tiny_config(tmp_path, campaign="killed")
    cfg = yaml.safe_load(config.read_text())
    # no early stop, and long enough (232 variants in batches of 8) to be caught mid-run
    cfg["train"].update(max_epochs=40, patience=40, batch_size=8)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "results" / "killed"
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(config), "--cores", "2", "--nolock"]
    first_log = tmp_path / "first_run.log"
    with first_log.open("w") as log:  # its own process group: the kill reaches the jobs too
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    train_logs = [out / "logs" / "train" / "seed0.log", out / "logs" / "train" / "seed1.log"]
    deadline = time.monotonic() + 600
    try:
        # wait until a training job has finished at least one epoch (its resume state exists)
        while not list((out / "models").glob(".seed*.resume.pt")):
            assert proc.poll() is None, f"snakemake ended before training started:\n{first_log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            jobs = _descendants(proc.pid)
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
            for pid in jobs:  # a job in a group of its own would survive the group kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "models" / "metrics.json").exists(), "killed too late: the run had finished"
    assert not all((out / "models" / f"seed{k}.pt").exists() for k in (0, 1)), "killed after training"
    assert any(p.exists() for p in train_logs)
    finished = {rel: (out / rel).stat().st_mtime_ns for rel in
                ["data/dataset.parquet", "data/report.md", "tune/best.json", "tune/trials.tsv"]}
    assert not list((out / "tune").glob("worker*.done")), "the workers' markers are temp(): gone once collected"
    resumed_from = sorted(p.name for p in (out / "models").glob(".seed*.resume.pt"))

    rerun = workflow.snakemake(tmp_path, config, "--rerun-incomplete")
    text = rerun.stdout + rerun.stderr
    for rel in ["models/seed0.pt", "models/seed1.pt", "models/metrics.json", "ranking.csv", "ranking.fasta"]:
        assert (out / rel).is_file(), rel
    for rel, mtime in finished.items():
        assert (out / rel).stat().st_mtime_ns == mtime, f"{rel} was redone"
    for rule in ("stage_config", "preprocess", "tune_worker", "tune_collect"):
        assert f"rule {rule}:" not in text and f"localrule {rule}:" not in text, f"{rule} reran:\n{text[-3000:]}"
    # the killed training job continued from its saved epoch instead of starting over
    logs = "".join(p.read_text() for p in train_logs if p.exists())
    assert "resuming" in logs, (resumed_from, logs[-3000:])
