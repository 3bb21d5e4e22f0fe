"""ComfyUI loads this file when the repository is cloned into custom_nodes/ (docs/comfyui.md); eligen itself is
the `eligen` Python package and does not use it."""

from .eligen_comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
