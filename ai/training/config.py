"""The configuration of a training run (:class:`TrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Everything a training run needs; saved with the checkpoints and in the exported manifest.

    The defaults are the recipe of the shipped segmentation bundle; a task
    reads the fields it needs (the classifier, for instance, uses ``patch``
    as its whole-volume input size and ``channels`` for its stages).

    Attributes
    ----------
    data : str
        Folder of ``*_image.nii.gz`` / ``*_labels.nii.gz`` pairs.
    out : str
        Bundle folder to write; checkpoints go in ``out/checkpoints``.
    epochs, steps_per_epoch : int
        Length of the run.
    patch : (int, int, int)
        Patch size ``(z, y, x)`` (segmentation), or the whole-volume input (classification).
    batch_size : int
        Patches per step (per DDP rank).
    lr, weight_decay : float
        AdamW parameters; the learning rate follows a cosine schedule over the run.
    spacing : (float, float, float)
        Voxel spacing ``(x, y, z)`` mm of the training grid.
    channels, strides, num_res_units :
        Network shape.
    labels : dict of int to str
        Label values and names (segmentation).
    val_fraction : float
        Fraction of the pairs held out for validation.
    workers : int
        DataLoader worker processes.
    seed : int
        Seed of weights, patches and augmentation.
    amp : bool
        Automatic mixed precision on CUDA (the CPU always trains in fp32).
    foreground_fraction : float
        Fraction of segmentation patches centred on foreground.
    sampling : {"components", "voxels"}
        How a foreground patch centre is chosen (see below).
    resume : bool
        Continue from ``out/checkpoints/last.pt`` when it exists.
    task : str
        The registered task to train (:func:`ai.training.task_names`).
    flip : bool
        Left-right flip augmentation.  Off for label maps that name sides
        (right and left lung): a mirrored chest would teach the network that
        the right lung may lie on the left.
    val_every : int
        Validate every this many epochs (and after the last); only validated
        epochs can become the exported best model.
    hard_negative_fraction : float
        Fraction of segmentation patches centred on a hard negative (a voxel
        of ``*_hardneg.nii.gz`` beside the pair: vessels, airway walls,
        fissures, consolidations), so that the network learns what is *not*
        a lesion.  Cases without such a file draw a random centre instead.
    """

    data: str
    out: str
    epochs: int = 40
    steps_per_epoch: int = 50
    patch: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    labels: dict[int, str] = field(default_factory=lambda: {1: "right lung", 2: "left lung", 3: "nodule"})
    val_fraction: float = 0.2
    workers: int = 2
    seed: int = 0
    amp: bool = True
    foreground_fraction: float = 0.6
    # "components": a foreground patch centres on a label chosen uniformly, then on one of its connected
    # components chosen uniformly, so a 6 mm nodule is seen as often as a 25 mm one (or a lung);
    # "voxels": on a random foreground voxel, which is nearly always lung.
    sampling: str = "components"
    resume: bool = True
    task: str = "segmentation"  # or "classification" (nodule present/absent); see ai.training.task_names()
    flip: bool = False
    val_every: int = 1
    hard_negative_fraction: float = 0.0
