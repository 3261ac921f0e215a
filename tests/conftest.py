"""Test-wide settings."""

import os

# As in lyra/cli.py: with pytest-xdist workers and subprocesses sharing two cores, spinning OpenMP
# threads slow every test down many times over. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
