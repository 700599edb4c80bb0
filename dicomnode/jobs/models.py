"""The model registry: where bundles are found by name, and the loaded models a worker keeps between jobs.

A model is named by a folder, by the name of a model installed in the node's
model directory (``dicomnode models import``), or by the name of a bundle
shipped under ``ai/bundles``.  Loading a bundle imports torch, so this module
imports :mod:`ai.bundle` and :mod:`ai.engine` only when a model is first
asked for.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import shutil
import threading
import uuid
from datetime import datetime, timezone
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


class ModelFormat(enum.StrEnum):
    """The layouts a model folder can have."""

    DICOMNODE = "dicomnode"  # manifest.json and weights (ai/bundle.py)
    MONAI = "monai-bundle"  # configs/metadata.json, configs/inference.json, models/
    NNUNET = "nnunet-v2"  # dataset.json, plans.json, fold_*/checkpoint_final.pth
    TOTALSEGMENTATOR = "totalsegmentator"  # a weights folder: Dataset*/<trainer>__<plans>__<config>/ nnU-Net models
    TOTALSEGMENTATOR_TASK = "totalsegmentator-task"  # one task installed from it (ai/totalseg_bundle.py)

    @property
    def runnable(self) -> bool:
        """Whether this version of the node can run models of this format (a weights folder: one task at a time)."""
        return self is not ModelFormat.TOTALSEGMENTATOR


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IMPORT_RECORD = "dicomnode-import.json"  # written beside an installed model: where it came from, when


def model_format(path: Path) -> ModelFormat | None:
    """The layout of a model folder, or ``None`` when it is none that the node knows."""
    if (path / "manifest.json").is_file():
        return ModelFormat.DICOMNODE
    from ai.monai_bundle import is_monai_bundle
    from ai.nnunet_bundle import is_nnunet_folder
    from ai.totalseg_bundle import is_totalseg_task

    if is_totalseg_task(path):
        return ModelFormat.TOTALSEGMENTATOR_TASK
    if is_monai_bundle(path):
        return ModelFormat.MONAI
    if is_nnunet_folder(path):
        return ModelFormat.NNUNET
    if path.is_dir() and any(
        p.is_dir() and p.name.startswith("Dataset") and any(q.is_dir() and "__" in q.name for q in p.iterdir())
        for p in path.iterdir()
    ):
        return ModelFormat.TOTALSEGMENTATOR
    return None


def totalsegmentator_tasks(folder: Path) -> list[Path]:
    """The nnU-Net v2 task folders (``Dataset*/<trainer>__<plans>__<config>``) of a TotalSegmentator weights folder."""
    return sorted(
        q for p in folder.iterdir() if p.is_dir() and p.name.startswith("Dataset")
        for q in p.iterdir() if q.is_dir() and model_format(q) is ModelFormat.NNUNET
    )


def installed_names(models_dir: Path | None) -> list[str]:
    """Names of the models installed in ``models_dir`` (folders of a known format)."""
    if models_dir is None or not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and _NAME.fullmatch(p.name) and model_format(p))


def bundle_path(name: str | None, models_dir: Path | None = None) -> Path:
    """The folder of a model given by path, installed name or shipped name (default: the chest-CT bundle).

    Raises
    ------
    DicomNodeError
        No such folder and no such model; the message lists the installed and shipped ones.
    """
    p = Path(name) if name else SHIPPED_BUNDLES / DEFAULT_MODEL
    if not p.is_dir() and name and models_dir is not None and _NAME.fullmatch(name):
        p = models_dir / name
    if not p.is_dir():
        p = SHIPPED_BUNDLES / str(name)
    if not p.is_dir():
        installed = ", ".join(installed_names(models_dir)) or "none"
        raise DicomNodeError(
            f"no model {name!r} (installed: {installed}; shipped: {', '.join(shipped_names()) or 'none'}; or give a model folder)"
        )
    return p


def find_bundle(name: str | None, models_dir: Path | None = None) -> Bundle:
    """Load and validate a bundle by path, installed name or shipped name (see :func:`bundle_path`)."""
    from ai.bundle import load_bundle

    return load_bundle(bundle_path(name, models_dir))


def _write_task_record(folder: Path, name: str, task: str, fast: bool) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from ai.totalseg_bundle import RECORD

    try:
        ts_version = version("TotalSegmentator")
    except PackageNotFoundError:
        ts_version = ""
    record = {"name": name, "task": task, "fast": fast, "totalsegmentator_version": ts_version}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def install_model(
    source: Path, name: str, models_dir: Path, *, replace: bool = False, task: str | None = None, fast: bool = False,
) -> tuple[Path, ModelFormat]:
    """Validate the model folder ``source`` and copy it into ``models_dir/name``.

    A TotalSegmentator weights folder installs one ``task`` (``total``,
    ``lung_vessels``, ...; ``fast`` for its 3 mm variant): only the weights
    folders that task needs are copied, with a record naming the task.

    The copy is made under a temporary name and renamed into place, so a
    worker never sees half a model; with ``replace``, an installed model of
    that name is swapped out the same way.

    Raises
    ------
    DicomNodeError
        Not a model folder, a format this version cannot run, a model that
        does not validate (every problem named), a bad or taken name.
    """
    from ai.bundle import BundleError, load_bundle

    if not _NAME.fullmatch(name):
        raise DicomNodeError(f"model name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if name in shipped_names():
        raise DicomNodeError(f"model name {name!r} is a shipped bundle's; choose another")
    if not source.is_dir():
        raise DicomNodeError(f"{source} is not a folder")
    fmt = model_format(source)
    if fmt is None:
        raise DicomNodeError(
            f"{source} is not a model folder: it has no manifest.json (dicomnode bundle), configs/metadata.json "
            "(MONAI bundle), dataset.json with plans.json (nnU-Net v2) or Dataset*/ model folders (TotalSegmentator)"
        )
    if fmt is ModelFormat.TOTALSEGMENTATOR and task is None:
        from ai.totalseg_bundle import complete_tasks

        tasks = totalsegmentator_tasks(source)
        runnable = complete_tasks(source)
        raise DicomNodeError(
            f"{source} is a TotalSegmentator weights folder: import one task at a time, with --task "
            f"({', '.join(runnable) if runnable else 'none of its tasks has all its weights here'}), "
            "or one nnU-Net v2 folder"
            + (f": {', '.join(str(t) for t in tasks)}" if tasks else " (none of its Dataset*/ folders holds one)")
        )
    if task is not None and fmt is not ModelFormat.TOTALSEGMENTATOR:
        raise DicomNodeError(f"--task is for a TotalSegmentator weights folder; {source} is {fmt.value if fmt else 'none'}")
    if not fmt.runnable and fmt is not ModelFormat.TOTALSEGMENTATOR:
        raise DicomNodeError(f"{source} is a {fmt.value} model, which this version of the node cannot run yet")
    copy: list[str] | None = None  # the subfolders to copy (a TotalSegmentator task: its weights only)
    if fmt is ModelFormat.TOTALSEGMENTATOR:
        assert task is not None
        from ai.errors import AIError
        from ai.totalseg_bundle import missing_folders, weight_folders

        try:
            copy, missing = weight_folders(task, fast), missing_folders(source, task, fast)
        except AIError as exc:
            raise DicomNodeError(str(exc)) from exc
        if missing:
            raise DicomNodeError(
                f"TotalSegmentator task {task}{' (fast)' if fast else ''} needs weights that {source} lacks: {', '.join(missing)} "
                "(download them where there is internet with TotalSegmentator's own tools, e.g. totalseg_download_weights, and copy them here)"
            )
    elif fmt is ModelFormat.NNUNET:
        from ai.nnunet_runner import problems

        found = problems(source)  # files and JSON only: nnunetv2 need not be installed to import a model
        if found:
            raise DicomNodeError(f"{source} does not validate as an nnU-Net v2 model: {'; '.join(found)}")
    else:
        try:
            load_bundle(source)
        except BundleError as exc:
            raise DicomNodeError(f"{source} does not validate: {exc}") from exc
    dest = models_dir / name
    if dest.exists() and not replace:
        raise DicomNodeError(f"a model named {name!r} is installed already ({dest}); use --replace to swap it")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".import-{uuid.uuid4().hex}"
    if copy is None:
        shutil.copytree(source, tmp)
    else:
        for sub in copy:
            shutil.copytree(source / sub, tmp / sub)
        _write_task_record(tmp, name, str(task), fast)
    record = {"name": name, "format": fmt.value, "source": str(source.resolve()),
              "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if copy is not None:  # what was copied must describe itself as a model, before it goes live
        try:
            load_bundle(tmp)
        except BundleError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DicomNodeError(f"TotalSegmentator task {task} does not validate: {exc}") from exc
    old = models_dir / f".replaced-{uuid.uuid4().hex}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("installed model %s (%s) in %s", name, fmt.value, models_dir)
    return dest, fmt


class ModelRegistry:
    """Bundles and loaded models of one worker, each loaded once and kept between jobs.

    Parameters
    ----------
    device : str
        ``auto``, ``cpu`` or ``cuda``: where models run.
    names : sequence of str
        The models considered when no routing rule names any (default: every shipped bundle).
    models_dir : pathlib.Path, optional
        Where ``dicomnode models import`` installs models (looked up by name
        before the shipped bundles).  Installed models run only when named in
        ``names`` or by a routing rule.
    """

    def __init__(self, device: str = "auto", names: tuple[str, ...] = (), models_dir: Path | None = None) -> None:
        self.device = device
        self.names = names
        self.models_dir = models_dir
        self._bundles: dict[str, Bundle] = {}
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def bundle(self, name: str) -> Bundle:
        """A bundle by name or folder, loaded once."""
        with self._lock:
            if name not in self._bundles:
                self._bundles[name] = find_bundle(name, self.models_dir)
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
