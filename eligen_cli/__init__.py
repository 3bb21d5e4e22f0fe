"""eligen: entity-level controlled image generation (EliGen) on FLUX."""

__version__ = "0.1.0"
