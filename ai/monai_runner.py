"""Run a MONAI bundle with its own transforms: ``inference.json`` through ``monai.bundle.ConfigParser``.

The bundle's ``preprocessing`` (minus its loader), ``network_def``, ``inferer``
and ``postprocessing`` (minus its writers) run on an in-memory volume, as the
bundle's own ``SupervisedEvaluator`` would run them on a file: the loader is
replaced by a ``MetaTensor`` carrying the affine and metadata ``LoadImaged``
would have produced, so ``Orientationd``, ``Spacingd`` and ``Invertd`` work.
No DICOM and no files here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.errors import AIError
from ai.monai_import import import_monai

logger = logging.getLogger(__name__)

INFERENCE = Path("configs") / "inference.json"
METADATA = Path("configs") / "metadata.json"
STATE_DICT = Path("models") / "model.pt"
TORCHSCRIPT = Path("models") / "model.ts"
LOADERS = ("LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd")  # replaced by the in-memory volume
WRITERS = ("SaveImage", "SaveImaged")  # the node writes its own outputs
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class MonaiBundleError(AIError):
    """A MONAI bundle's config cannot be read, built or run."""


@dataclass
class MonaiOutput:
    """A MONAI bundle's result on the input grid."""

    labels: np.ndarray  # [z, y, x] uint8
    probabilities: np.ndarray | None  # (K, z, y, x) float32, when the postprocessing keeps channels
    affine: np.ndarray  # 4x4 RAS affine of the output grid (MONAI's convention)


def _short(target: Any) -> str:
    """The class name of a ``_target_`` such as ``monai.transforms.LoadImaged``."""
    return str(target).rsplit(".", 1)[-1]


def _transforms(config: Any) -> list[Any] | None:
    """The transform list of a ``Compose`` config, or None when it is not one."""
    if isinstance(config, dict) and isinstance(config.get("transforms"), list):
        return list(config["transforms"])
    return None


def read_parser(path: Path, device: torch.device) -> Any:
    """A ``ConfigParser`` over the bundle's ``inference.json`` with ``metadata.json`` as ``_meta_``.

    ``bundle_root`` is the bundle folder and ``device`` the node's device.

    Raises
    ------
    MonaiBundleError
        A config is missing or is not valid JSON.
    """
    import_monai()
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    for rel in (INFERENCE, METADATA):
        if not (path / rel).is_file():
            raise MonaiBundleError(f"{path.name}: {rel} does not exist")
    try:
        parser.read_config(str(path / INFERENCE))
        parser.read_meta(str(path / METADATA))
    except (OSError, ValueError) as exc:
        raise MonaiBundleError(f"{path.name}: the configs cannot be read: {exc}") from exc
    parser["bundle_root"] = str(path)
    parser["device"] = f"$torch.device('{device}')"
    return parser


def _image_key(parser: Any) -> str:
    """The key the bundle's loader fills (``image`` by default)."""
    for i, t in enumerate(_transforms(parser.get("preprocessing")) or []):
        if isinstance(t, dict) and _short(t.get("_target_")) in ("LoadImaged", "EnsureChannelFirstd"):
            keys = parser.get_parsed_content(f"preprocessing#transforms#{i}#keys") if "keys" in t else "image"
            return str(keys[0] if isinstance(keys, (list, tuple)) else keys)
    return "image"


def _strip(parser: Any, section: str, drop: tuple[str, ...]) -> list[int]:
    """Remove the transforms named in ``drop`` from a ``Compose`` section, before anything is built.

    Returns the positions in ``inference.json`` of the transforms kept.
    """
    items = _transforms(parser.get(section)) if section in parser.get() else None
    if items is None:
        return []
    kept = [i for i, t in enumerate(items) if not (isinstance(t, dict) and _short(t.get("_target_")) in drop)]
    parser[f"{section}#transforms"] = [items[i] for i in kept]
    return kept


def load_network(parser: Any, path: Path, device: torch.device) -> torch.nn.Module:
    """The bundle's ``network_def`` with ``models/model.pt``, else the TorchScript ``models/model.ts``.

    Raises
    ------
    MonaiBundleError
        Neither weights file exists, or they do not fit the network.
    """
    pt, ts = path / STATE_DICT, path / TORCHSCRIPT
    try:
        if pt.is_file() and "network_def" in parser.get():
            net = parser.get_parsed_content("network_def", instantiate=True)
            state = torch.load(pt, map_location="cpu", weights_only=True)
            for wrapper in ("state_dict", "model", "network"):  # CheckpointSaver and Model Zoo variants
                if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                    state = state[wrapper]
            net.load_state_dict(state, strict=True)
            module: torch.nn.Module = net.to(device).eval()
            return module
        if ts.is_file():
            return torch.jit.load(str(ts), map_location=device).eval()
    except Exception as exc:
        raise MonaiBundleError(f"{path.name}: the network does not load: {exc}") from exc
    if pt.is_file():
        raise MonaiBundleError(f"{path.name}: {STATE_DICT} exists but inference.json has no network_def to load it into")
    raise MonaiBundleError(f"{path.name}: neither {STATE_DICT} nor {TORCHSCRIPT} exists")


def meta_tensor(
    array: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    direction: np.ndarray,
    origin_lps: tuple[float, float, float] | None = None,
) -> Any:
    """Our ``[z, y, x]`` volume as the channel-first ``MetaTensor`` ``LoadImaged`` + ``EnsureChannelFirstd`` give.

    Index axes are x, y, z (as in the file) and the affine is RAS, as MONAI's
    readers produce it.
    """
    from monai.data import MetaTensor

    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ (np.asarray(direction, float) * np.asarray(spacing_xyz, float)[None, :])
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin_lps if origin_lps is not None else (0.0, 0.0, 0.0), float)
    data = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))[None]
    affine_t = torch.as_tensor(affine, dtype=torch.float64)
    meta = {  # "affine" is given to MetaTensor itself
        "original_affine": affine_t.clone(),
        "spatial_shape": np.asarray(data.shape[1:]),
        "original_channel_dim": "no_channel",
        "space": "RAS",
        "filename_or_obj": "volume",
    }
    return MetaTensor(data, affine=affine_t, meta=meta)


class MonaiRunner:
    """A MONAI bundle loaded once: its transforms, network and inferer, kept between volumes.

    Parameters
    ----------
    path : Path
        The bundle folder (``configs/``, ``models/``).
    device : torch.device
        Where the network and the inferer run.

    Raises
    ------
    MonaiBundleError
        A section cannot be built; the message names it.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path, self.device = Path(path), device
        parser = read_parser(self.path, device)
        self.key = _image_key(parser)
        _strip(parser, "preprocessing", LOADERS)
        _strip(parser, "postprocessing", WRITERS)
        self.network = load_network(parser, self.path, device)
        self.preprocessing = self._build(parser, "preprocessing")
        self.inferer = self._build(parser, "inferer")
        self.postprocessing = self._build(parser, "postprocessing") if "postprocessing" in parser.get() else None

    def _build(self, parser: Any, section: str) -> Any:
        if section not in parser.get():
            raise MonaiBundleError(f"{self.path.name}: inference.json has no '{section}'")
        try:
            return parser.get_parsed_content(section, instantiate=True)
        except Exception as exc:
            problems = explain(self.path, self.device) or [str(exc)]
            raise MonaiBundleError(f"{self.path.name}: " + "; ".join(problems)) from exc

    def run(
        self,
        array: np.ndarray,
        spacing_xyz: tuple[float, float, float],
        direction: np.ndarray,
        origin_lps: tuple[float, float, float] | None = None,
    ) -> MonaiOutput:
        """Preprocess, infer and postprocess one ``[z, y, x]`` volume as the bundle says.

        Raises
        ------
        MonaiBundleError
            A transform or the network fails, or the result is not on the input grid.
        """
        from monai.data import decollate_batch, list_data_collate

        try:
            item = self.preprocessing({self.key: meta_tensor(array, spacing_xyz, direction, origin_lps)})
            batch = list_data_collate([item])
            # as SupervisedEvaluator: infer on the batch, then post-process each decollated item
            with torch.no_grad():
                inputs = batch[self.key].to(self.device)
                pred = self.inferer(inputs, self.network)
            out = {**decollate_batch(batch)[0], **decollate_batch({self.key: inputs, "pred": pred})[0]}
            if self.postprocessing is not None:
                out = self.postprocessing(out)
        except Exception as exc:
            raise MonaiBundleError(f"{self.path.name}: the bundle's pipeline fails on this volume: {exc}") from exc
        return self._output(out["pred"], array.shape)

    def _output(self, pred: Any, shape: tuple[int, ...]) -> MonaiOutput:
        from monai.data import MetaTensor

        affine = np.asarray(pred.affine if isinstance(pred, MetaTensor) else np.eye(4), dtype=float)
        p = torch.as_tensor(pred).detach().float().cpu()
        if p.ndim == 3:
            p = p[None]
        if tuple(p.shape[1:]) != (shape[2], shape[1], shape[0]):
            raise MonaiBundleError(
                f"{self.path.name}: the postprocessing returns a {tuple(p.shape[1:])} grid, not the input's "
                f"{(shape[2], shape[1], shape[0])} (x, y, z): add Invertd to bring the prediction back"
            )
        probs = None
        if p.shape[0] > 1:  # channels kept: probabilities (or scores) per class
            probs = p.permute(0, 3, 2, 1).numpy().astype(np.float32)
            labels = p.argmax(0)
        else:
            labels = p[0].round()
        return MonaiOutput(labels.permute(2, 1, 0).numpy().astype(np.uint8), probs, affine)


def explain(path: Path, device: torch.device | None = None) -> list[str]:
    """What of a MONAI bundle cannot be built, in words; empty when everything builds.

    Builds the network (with its weights), each preprocessing and
    postprocessing transform, and the inferer, as :class:`MonaiRunner` would.
    """
    path, device = Path(path), device or torch.device("cpu")
    try:
        parser = read_parser(path, device)
    except MonaiBundleError as exc:
        return [str(exc)]
    problems: list[str] = []
    try:
        positions = {"preprocessing": _strip(parser, "preprocessing", LOADERS), "postprocessing": _strip(parser, "postprocessing", WRITERS)}
    except Exception as exc:  # a malformed config: report it rather than fail the check
        return [f"inference.json: the transform lists cannot be read: {exc}"]
    try:
        load_network(parser, path, device)
    except MonaiBundleError as exc:
        problems.append(str(exc).removeprefix(f"{path.name}: "))
    causes: set[str] = set()  # a transform that fails fails Invertd(transform=@preprocessing) too: say it once
    for section in ("preprocessing", "postprocessing"):
        items = _transforms(parser.get(section)) if section in parser.get() else None
        if items is None:
            if section == "preprocessing":
                problems.append("inference.json: 'preprocessing' is not a Compose with a transforms list")
            continue
        for i, (t, where) in enumerate(zip(items, positions[section])):
            name = t.get("_target_", "?") if isinstance(t, dict) else t
            try:
                parser.get_parsed_content(f"{section}#transforms#{i}", instantiate=True)
            except Exception as exc:
                if _cause(exc) not in causes:
                    problems.append(f"inference.json: {section} transform #{where} {name!r} cannot be built: {_cause(exc)}")
                causes.add(_cause(exc))
    if "inferer" not in parser.get():
        problems.append("inference.json: there is no 'inferer'")
    else:
        try:
            parser.get_parsed_content("inferer", instantiate=True)
        except Exception as exc:
            problems.append(f"inference.json: the inferer cannot be built: {_cause(exc)}")
    problems += _grid_problems(parser)
    return problems


def _grid_problems(parser: Any) -> list[str]:
    """A bundle that resamples or reorients but never inverts would return labels on the wrong grid."""
    spatial = ("Spacingd", "Orientationd", "Resized", "CropForegroundd", "Spacing", "Orientation")
    pre = [_short(t.get("_target_")) for t in _transforms(parser.get("preprocessing")) or [] if isinstance(t, dict)]
    post = [_short(t.get("_target_")) for t in _transforms(parser.get("postprocessing")) or [] if isinstance(t, dict)]
    moved = [n for n in pre if n in spatial]
    if moved and not any(n in ("Invertd", "Invert") for n in post):
        return [f"inference.json: preprocessing changes the grid ({', '.join(moved)}) but postprocessing has no Invertd"]
    return []


def _cause(exc: BaseException) -> str:
    """The innermost error message (ConfigParser wraps the real cause in several layers)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"



def describe(path: Path) -> str:
    """What runs, in words, from ``inference.json`` (nothing is built), for ``models show``."""
    try:
        config = json.loads((Path(path) / INFERENCE).read_text())
    except (OSError, ValueError) as exc:
        return f"{INFERENCE} cannot be read: {exc}"

    def names(section: str, drop: tuple[str, ...]) -> str:
        items = _transforms(config.get(section)) or []
        kept = [_short(t.get("_target_")) for t in items if isinstance(t, dict) and _short(t.get("_target_")) not in drop]
        return ", ".join(kept) or "none"

    inferer = config.get("inferer")
    return (
        f"the bundle's own transforms: preprocessing {names('preprocessing', LOADERS)} (its loader replaced by the "
        f"in-memory volume); inferer {_short(inferer.get('_target_')) if isinstance(inferer, dict) else inferer}; "
        f"postprocessing {names('postprocessing', WRITERS)} (writers left out)"
    )
