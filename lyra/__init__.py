"""Lyra: subquadratic sequence-to-fitness models (PGC + S4D) and the campaign pipeline around them."""

__all__ = ["Lyra", "LyraConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so that `lyra check-config` and the Snakefile do not pay for torch.
    if name in __all__:
        from lyra import model

        return getattr(model, name)
    raise AttributeError(f"module 'lyra' has no attribute {name!r}")
