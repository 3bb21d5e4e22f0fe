"""Python's cyclic garbage collector while a command imports torch, diffusers and transformers.

Those imports create about a million objects that live as long as the process (modules, classes, functions) and
little garbage, yet the collector, left on, walks the growing heap again and again while they are created, and
once more in full when the process exits: together a large part of the CPU time of `eligen generate` on the
built-in model (docs/performance.md, "Start-up of eligen generate"). So imports run with the collector off; after
them one collection frees their garbage, and what is left is frozen (`gc.freeze`: later collections, the one at
exit included, skip it). The collection before the freeze matters: garbage frozen with them would stay forever,
and with it whatever it reaches (an exception caught during an import keeps the caller's frames, and so a model
a caller loads later, alive). Models are loaded after the freeze and stay collectable.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports() -> Iterator[None]:
    """Import inside: the collector off (then as it was); at the end one collection, then every object left frozen."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if enabled:
            gc.enable()
