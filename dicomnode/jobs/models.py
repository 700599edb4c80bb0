"""The model registry: where bundles are found by name, and the loaded models a worker keeps between jobs.

A model is named by a folder, or by the name of a bundle shipped under
``ai/bundles``.  Loading a bundle imports torch, so this module imports
:mod:`ai.bundle` and :mod:`ai.engine` only when a model is first asked for.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import ai
from dicomnode.errors import DicomNodeError

if TYPE_CHECKING:
    from ai.bundle import Bundle
    from ai.engine import Engine

logger = logging.getLogger(__name__)

SHIPPED_BUNDLES = Path(ai.__file__).resolve().parent / "bundles"
DEFAULT_MODEL = "chest-ct-lungs-nodules"


def shipped_names() -> list[str]:
    """Names of the bundles shipped under ``ai/bundles`` (folders with a manifest)."""
    if not SHIPPED_BUNDLES.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_BUNDLES.iterdir() if (p / "manifest.json").is_file())


def bundle_path(name: str | None) -> Path:
    """The folder of a bundle given by path or by shipped name (default: the chest-CT bundle).

    Raises
    ------
    DicomNodeError
        No such folder and no such shipped bundle; the message lists the shipped ones.
    """
    p = Path(name) if name else SHIPPED_BUNDLES / DEFAULT_MODEL
    if not p.is_dir():
        p = SHIPPED_BUNDLES / str(name)
    if not p.is_dir():
        raise DicomNodeError(f"no model bundle {name!r} (shipped: {', '.join(shipped_names()) or 'none'}; or give a bundle folder)")
    return p


def find_bundle(name: str | None) -> Bundle:
    """Load and validate a bundle by path or shipped name (see :func:`bundle_path`)."""
    from ai.bundle import load_bundle

    return load_bundle(bundle_path(name))


class ModelRegistry:
    """Bundles and loaded models of one worker, each loaded once and kept between jobs.

    Parameters
    ----------
    device : str
        ``auto``, ``cpu`` or ``cuda``: where models run.
    names : sequence of str
        The models considered when no routing rule names any (default: every shipped bundle).
    """

    def __init__(self, device: str = "auto", names: tuple[str, ...] = ()) -> None:
        self.device = device
        self.names = names
        self._bundles: dict[str, Bundle] = {}
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def bundle(self, name: str) -> Bundle:
        """A bundle by name or folder, loaded once."""
        with self._lock:
            if name not in self._bundles:
                self._bundles[name] = find_bundle(name)
            return self._bundles[name]

    def candidates(self) -> list[Bundle]:
        """``worker.models`` (default: every shipped bundle), loaded once."""
        return [self.bundle(n) for n in (self.names or tuple(shipped_names()))]

    def engine(self, bundle: Bundle) -> Engine:
        """The loaded model of ``bundle`` on this worker's device (loaded on first use)."""
        key = str(bundle.path)
        with self._lock:
            if key not in self._engines:
                from ai.engine import Engine

                self._engines[key] = Engine(bundle, device=self.device)
                logger.info("loaded model %s %s on %s", bundle.name, bundle.version, self._engines[key].device)
            return self._engines[key]
