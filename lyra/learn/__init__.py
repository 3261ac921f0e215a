"""Training and evaluating ensembles: `train` (TrainConfig and the training loop), `transforms` (target
transforms), `forward` (device, dataset tensors, batched forward passes), `checkpoints` (checkpoint and
resume files, prediction), `evaluate` (ensemble metrics, models/metrics.json and its learning checks) and
`metrics` (the metric functions)."""
