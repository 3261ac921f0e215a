"""The Lyra model: projected gated convolutions (PGC) and diagonal state-space (S4D) layers."""

from lyra.model.lyra import Lyra, LyraConfig

__all__ = ["Lyra", "LyraConfig"]
