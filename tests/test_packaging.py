"""The `workflow` extra installs everything the workflow's own commands need (`snakemake --report`
included), and envs/lyra.yaml, the conda environment of cluster users, lists the same packages."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# conda package -> PyPI distribution, where they differ
CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib", "snakemake-minimal": "snakemake"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(extra: str | None = None) -> list[Requirement]:
    """The project's requirements (or one extra's), from pyproject.toml: installed metadata may be stale."""
    project = pyproject()
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in lines]


def requires_of(dist: str, extras: set[str]) -> list[Requirement]:
    """An installed distribution's requirements for its base install plus `extras`, markers evaluated."""
    out = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def closure(reqs: list[Requirement]) -> set[str]:
    """Canonical names of every distribution the requirements pull in (through installed metadata)."""
    seen: dict[str, set[str]] = {}
    todo = list(reqs)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen and req.extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | req.extras
        try:
            todo += requires_of(req.name, seen[name])
        except md.PackageNotFoundError:  # not installed here (e.g. another platform's): nothing to follow
            pass
    return set(seen)


def report_imports() -> set[str]:
    """Top-level modules that snakemake's report code imports, read from its source (stdlib left out)."""
    import snakemake.report

    modules = set()
    for path in Path(snakemake.report.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "__future__"}


def test_workflow_extra_covers_what_snakemake_report_imports():
    """Every third-party module snakemake's report code imports (pygments among them, which snakemake
    itself does not require) comes with lyra's dependencies plus the workflow extra."""
    pytest.importorskip("snakemake")
    installed = closure(requirements() + requirements("workflow"))
    owners = md.packages_distributions()
    modules = report_imports()
    assert "pygments" in modules and "jinja2" in modules  # the scan sees the report's lazy imports
    missing = {m: owners.get(m) for m in modules
               if not {canonicalize_name(d) for d in owners.get(m, [m])} & installed}
    assert not missing, f"the workflow extra does not bring {missing} (imported by snakemake's report code)"
    assert "pytest" not in installed  # pygments must not come only through the test extra


def conda_dependencies() -> dict[str, str]:
    """envs/lyra.yaml -> {canonical PyPI name: version constraint}, conda and pip entries alike."""
    env = yaml.safe_load((REPO / "envs" / "lyra.yaml").read_text())
    entries = []
    for dep in env["dependencies"]:
        entries += dep["pip"] if isinstance(dep, dict) else [dep]
    out = {}
    for entry in entries:
        name, spec = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", entry.strip()).groups()
        out[canonicalize_name(CONDA_NAMES.get(name, name))] = spec.replace(" ", "").lstrip("=")
    return out


def test_conda_env_pins_every_requirement_within_its_range():
    """Each requirement of pyproject.toml (dependencies, the workflow and test extras) is pinned in
    envs/lyra.yaml to one version inside pyproject's range; conda has no extras, so a requirement's
    extras are listed as their packages."""
    pytest.importorskip("snakemake")  # its installed metadata says what snakemake[reports] adds
    conda = conda_dependencies()
    expected = {}
    for req in requirements() + requirements("workflow") + requirements("test"):
        expected[canonicalize_name(req.name)] = SpecifierSet(str(req.specifier))
        for extra_req in requires_of(req.name, set(req.extras)) if req.extras else []:
            if extra_req.marker is not None:  # only what the extra adds
                expected[canonicalize_name(extra_req.name)] = SpecifierSet(str(extra_req.specifier))
    unpinned = {name: conda.get(name) for name in expected if not re.fullmatch(r"\d+(\.\d+)*(\.post\d+)?", conda.get(name) or "")}
    assert not unpinned, f"envs/lyra.yaml: not pinned to one version: {unpinned}"
    outside = {name: (str(spec), conda[name]) for name, spec in expected.items() if conda[name] not in spec}
    assert not outside, f"envs/lyra.yaml pins outside pyproject.toml's ranges (name: (pyproject, conda)): {outside}"
    assert "pygments" in expected and "scikit-learn" in expected


def test_conda_env_installs_this_checkout():
    """Snakemake runs envs/lyra.post-deploy.sh in each new environment: it must install the project, so
    the rules' `lyra` is this workflow's code."""
    script = (REPO / "envs" / "lyra.post-deploy.sh").read_text()
    assert re.search(r"pip install [^\n]*-e \.", script)
    assert os.access(REPO / "envs" / "lyra.post-deploy.sh", os.X_OK)


@pytest.mark.slow
def test_workflow_extra_alone_runs_snakemake_report(tmp_path):
    """A fresh virtual environment with only torch and `.[workflow]` (no test extra, so no pytest and
    whatever it pulls in) runs the report rule and `snakemake --report` on a finished tiny campaign."""
    started = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # a copy of the sources, so the build leaves no build/ or egg-info behind in the repository
    src = tmp_path / "src"
    shutil.copytree(REPO / "lyra", src / "lyra", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for args in (["torch==2.13.0"], [f"{src}[workflow]"]):  # the CPU torch wheel first, as on a cluster
        run = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"pip install {args}: {run.stderr[-3000:]}"
    installed = time.perf_counter() - started
    probe = subprocess.run([python, "-c", "import pytest"], capture_output=True, text=True)
    assert probe.returncode != 0, "pytest is installed in the workflow-only environment"

    from test_report import build_campaign, run_report_rule_and_html_report

    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    html = run_report_rule_and_html_report(build_campaign(tmp_path / "campaign"), tmp_path / "run", python, env)
    assert "pygments" in html  # the report's package list names the highlighter it used
    print(f"venv + install {installed:.0f} s, total {time.perf_counter() - started:.0f} s")
