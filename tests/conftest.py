"""Test-wide settings."""

import os

# As in lyra/cli.py: with pytest-xdist workers and subprocesses sharing two cores, spinning OpenMP
# threads slow every test down many times over. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    """The long end-to-end tests (slow, slurm) first: with xdist (`--dist worksteal`, as .ci/run runs it)
    both workers start on them and the quick tests fill the gaps, instead of one worker running them
    alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None and item.get_closest_marker("slurm") is None)
