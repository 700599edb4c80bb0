"""Import MONAI without PyTorch-Ignite, which the node never uses.

MONAI imports ``ignite.engine`` when it is itself imported
(``monai.utils.enums`` takes ignite's ``EventEnum`` as a base class), and
ignite's engine loads ``torch.distributed.optim``: about 1 s at every start of
``dicomnode infer`` and of a worker, and memory in every worker, measured on
this project's 2-core machine. Ignite is needed only by MONAI's engines and
handlers (a bundle's ``evaluator`` and ``handlers`` sections), which the node
never builds: it runs a bundle's transforms, network and inferer itself
(``ai.monai_runner``). MONAI supports running without ignite installed; this
module gives it that view while it is first imported, and only then.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def import_monai() -> ModuleType:
    """``monai``, imported (the first time) with ignite hidden from it.

    Ignite is hidden only during MONAI's own import: whoever imports ignite
    afterwards gets it. When MONAI is already imported, nothing changes.
    """
    if "monai" in sys.modules:
        return sys.modules["monai"]
    with _LOCK:
        if "monai" in sys.modules:
            return sys.modules["monai"]
        hidden = "ignite" not in sys.modules
        if hidden:
            # A None entry makes ``import ignite`` raise ModuleNotFoundError,
            # which MONAI's ``optional_import`` records as "not installed".
            sys.modules["ignite"] = None  # type: ignore[assignment]
        try:
            import monai
        finally:
            if hidden and sys.modules.get("ignite", ...) is None:
                del sys.modules["ignite"]
        return monai
