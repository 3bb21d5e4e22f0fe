"""eligen: entity-level controlled image generation (EliGen) on FLUX and Qwen-Image."""

from eligen.pipeline import __version__

__all__ = ["__version__"]
