"""eligen's ComfyUI nodes: EliGen regional attention on ComfyUI's own FLUX.1 and Qwen-Image models (docs/comfyui.md).

A thin adapter: regions, the token rule, the attention mask and the text positions come from `eligen.pipeline`;
this package holds only ComfyUI's side (node definitions, conditioning entries, the model patch).
"""

from .checkout import ensure_pipeline

ensure_pipeline()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
