"""What each case draws for its acquisition and for the patient's placement in the scanner.

One random stream per concern (:func:`stream`) keeps the draws of one part
from shifting when another part changes.  The ranges are deliberately wider
than a typical training generator's: noise 10-100 HU (log-uniform),
thicknesses 0.75-3 mm, in-plane pixels of 0.6-0.9 mm at matrix 512 (the
field of view scales with ``matrix``), smooth to sharp kernels, prone and
feet-first positions, and padding outside a circular field of view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

POSITIONS = ("HFS", "HFP", "FFS", "FFP")
# Columns: the LPS direction of the x, y and z index axes, per patient position.
DIRECTIONS = {
    "HFS": np.diag([1.0, 1.0, 1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "FFP": np.diag([1.0, -1.0, -1.0]),
}
STREAMS = {"acq": 1, "anatomy": 2, "trees": 3, "nodules": 4, "confounders": 5, "noise": 6, "texture": 7,
           "emphysema": 8, "opacities": 9}


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random generator for one concern of one case.

    Parameters
    ----------
    seed : int
        The case seed.
    name : str
        A key of :data:`STREAMS`.

    Returns
    -------
    numpy.random.Generator
    """
    return np.random.default_rng([int(seed), STREAMS[name], 0xE7A1])


@dataclass(frozen=True)
class Acquisition:
    """The scanner side of one case.

    Attributes
    ----------
    matrix : int
        In-plane matrix (square).
    pixel_mm : float
        In-plane pixel size (``pixel_512 * 512 / matrix``).
    pixel_512 : float
        The pixel size this field of view would have at matrix 512.
    thickness_mm : float
        Slice thickness, also the slice spacing.
    position : str
        Patient position: HFS, HFP, FFS or FFP.
    kernel : str
        ``smooth``, ``standard`` or ``sharp``.
    psf_sigma_mm : float
        In-plane Gaussian point-spread sigma of the kernel.
    edge_boost : float
        Mid-frequency boost of sharp kernels (0 for the others).
    noise_sigma : float
        Noise standard deviation in HU (in water, before clipping).
    noise_grain_mm : float
        Grain of the noise texture (peak of its power spectrum).
    pad_value : int or None
        Value outside the circular field of view, or None for no circle.
    contrast : str
        ``none``, ``arterial`` or ``venous``.
    shift_mm : tuple of float
        Patient offset from the isocentre (x, y) in mm.
    roll_deg : float
        Rotation of the patient about the long axis.
    margin_lo_mm, margin_hi_mm : float
        Scan range below the lung bases and above the apices.
    table_z_mm : float
        Patient z (LPS) of the lowest slice.
    """

    matrix: int
    pixel_mm: float
    pixel_512: float
    thickness_mm: float
    position: str
    kernel: str
    psf_sigma_mm: float
    edge_boost: float
    noise_sigma: float
    noise_grain_mm: float
    pad_value: int | None
    contrast: str
    shift_mm: tuple[float, float]
    roll_deg: float
    margin_lo_mm: float
    margin_hi_mm: float
    table_z_mm: float

    @property
    def direction(self) -> np.ndarray:
        """3x3 direction cosines, columns = LPS directions of the x, y, z index axes."""
        return DIRECTIONS[self.position].copy()

    @property
    def prone(self) -> bool:
        """True for prone positions (the anterior chest lies on the table)."""
        return self.position.endswith("P")

    def as_meta(self) -> dict[str, object]:
        """The drawn values as plain JSON-able types."""
        d = asdict(self)
        d["shift_mm"] = [float(v) for v in self.shift_mm]
        return d


def draw_acquisition(seed: int, matrix: int) -> Acquisition:
    """Draw the acquisition of case ``seed``.

    Parameters
    ----------
    seed : int
        Case seed.
    matrix : int
        In-plane matrix; the field of view is ``pixel_512 * 512`` mm whatever the matrix.

    Returns
    -------
    Acquisition
    """
    r = stream(seed, "acq")
    pixel_512 = float(r.uniform(0.6, 0.9))
    thickness = float(r.choice([0.75, 1.0, 1.25, 2.0, 2.5, 3.0], p=[0.2, 0.1, 0.2, 0.1, 0.2, 0.2]))
    position = str(r.choice(POSITIONS, p=[0.55, 0.2, 0.15, 0.1]))
    kernel = str(r.choice(["smooth", "standard", "sharp"], p=[0.3, 0.35, 0.35]))
    psf = {"smooth": r.uniform(0.75, 1.1), "standard": r.uniform(0.5, 0.7), "sharp": r.uniform(0.3, 0.45)}[kernel]
    boost = float(r.uniform(0.3, 0.9)) if kernel == "sharp" else 0.0
    noise = float(np.exp(r.uniform(np.log(10.0), np.log(100.0))))
    grain = {"smooth": r.uniform(2.2, 3.5), "standard": r.uniform(1.5, 2.4), "sharp": r.uniform(0.9, 1.6)}[kernel]
    pad = [None, -2000, -3024][int(r.choice(3, p=[0.4, 0.3, 0.3]))]
    contrast = str(r.choice(["none", "arterial", "venous"], p=[0.45, 0.3, 0.25]))
    return Acquisition(
        matrix=int(matrix),
        pixel_mm=pixel_512 * 512.0 / matrix,
        pixel_512=pixel_512,
        thickness_mm=thickness,
        position=position,
        kernel=kernel,
        psf_sigma_mm=float(psf),
        edge_boost=boost,
        noise_sigma=noise,
        noise_grain_mm=float(grain),
        pad_value=pad,
        contrast=contrast,
        shift_mm=(float(r.uniform(-18, 18)), float(r.uniform(-12, 12))),
        roll_deg=float(r.uniform(-5, 5)),
        margin_lo_mm=float(r.uniform(15, 45)),
        margin_hi_mm=float(r.uniform(10, 35)),
        table_z_mm=float(r.uniform(-450, -150)),
    )
