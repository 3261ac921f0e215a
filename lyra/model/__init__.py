"""The Lyra model (arXiv 2503.16351): PGC and S4D layers (`lyra`, `s4d`), and their fast paths (`fast`)."""

from lyra.model.lyra import Lyra, LyraConfig, configure_optimizer, ssm_parameters

__all__ = ["Lyra", "LyraConfig", "configure_optimizer", "ssm_parameters"]
