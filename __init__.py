"""ComfyUI loads this file when the repository is cloned into custom_nodes/ (docs/comfyui.md); eligen itself is
the `eligen` Python package and does not use it. Outside ComfyUI it defines no nodes: pytest imports it too (the
repository's folder holds it), as a package when the folder's name is an identifier and as a lone module when it is
not (`my-checkout`), so the nodes are imported only inside a package where ComfyUI's modules exist."""

import importlib.util

if __package__ and importlib.util.find_spec("folder_paths") is not None:  # one of ComfyUI's own top-level modules
    from .eligen_comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
