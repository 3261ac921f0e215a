"""The data layer: from a measurement file to a validated, split ``dataset.parquet``.

  config       DataConfig, SplitConfig (the `data:` and `split:` sections)
  readers      measurement files (CSV / TSV / Parquet / FASTA / Excel) -> a frame whose index is the user's row
  validation   row checks and normalisation (sequences, mutations, padding, drops, targets, counts)
  aggregation  replicate measurements of one variant merged into one row
  splits       the split methods (split.method)
  dataset      prepare_dataset (the above, in order), writing, Dataset, load_dataset, load_dataset_meta
  variants     mutation strings and the wild type
  alphabet     residue alphabets and one-hot encoding

Nothing is imported here, so importing `lyra.data.variants` does not pull in pandas or pyarrow.
"""
