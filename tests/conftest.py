"""Test-wide settings."""

import os

# As in lyra/cli.py: with pytest-xdist workers and subprocesses sharing two cores, spinning OpenMP
# threads slow every test down many times over. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    """The long end-to-end tests first, the SLURM ones before the rest: with xdist (`--dist worksteal`,
    as .ci/run runs it) one worker starts on the SLURM tests, which share one cluster and so run one
    after another, while the other takes the slow local ones and both fill the gaps with quick tests,
    instead of one worker running them alone at the end."""
    items.sort(key=lambda item: (item.get_closest_marker("slurm") is None, item.get_closest_marker("slow") is None))
