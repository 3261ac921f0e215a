"""prepare_dataset writing into one folder, as the preprocess stage lays a campaign out."""

from __future__ import annotations

from pathlib import Path

from lyra.data.dataset import prepare_dataset


def prepare(data, split, out_dir, **kwargs) -> Path:
    """dataset.parquet and report.md in `out_dir`; returns the dataset's path."""
    out_dir = Path(out_dir)
    return prepare_dataset(data, split, out_dir / "dataset.parquet", report=out_dir / "report.md", **kwargs)
