"""Lyra: subquadratic sequence-to-fitness models (PGC + S4D) and the campaign pipeline around them."""

from lyra.model import Lyra, LyraConfig

__all__ = ["Lyra", "LyraConfig"]
__version__ = "0.1.0"
