"""ComfyUI loads this file when the repository is cloned into custom_nodes/ (docs/comfyui.md); eligen itself is
the `eligen` Python package and does not use it. Outside ComfyUI (pytest imports it as the folder's package) it
defines no nodes."""

import importlib.util

if importlib.util.find_spec("folder_paths") is not None:  # one of ComfyUI's own top-level modules
    from .eligen_comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
