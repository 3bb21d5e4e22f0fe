"""Make `eligen.pipeline` importable when this repository is cloned into ComfyUI's custom_nodes/ without
`pip install`: the pipeline package of the same checkout is registered under its installed name."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def ensure_pipeline() -> None:
    """Import `eligen.pipeline` from the installed eligen, else from this checkout's `pipeline/` folder."""
    try:
        import eligen.pipeline  # noqa: F401
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parent.parent
    init = root / "pipeline" / "__init__.py"
    if not init.is_file():
        raise ImportError(f"eligen nodes: eligen is not installed and {init} does not exist; "
                          "clone the whole eligen repository into custom_nodes/ or `pip install eligen`")
    if "eligen" not in sys.modules:
        package = types.ModuleType("eligen")
        package.__path__ = []
        sys.modules["eligen"] = package
    spec = importlib.util.spec_from_file_location("eligen.pipeline", init,
                                                  submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eligen.pipeline"] = module
    spec.loader.exec_module(module)
    sys.modules["eligen"].pipeline = module  # type: ignore[attr-defined]
