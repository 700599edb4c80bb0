"""Independent evaluation phantoms for the chest-CT lungs-and-nodules model.

**This family is frozen before training and must not be tuned afterwards.**
It was written independently of the training generator (``ai/phantoms/``)
and the training code (``ai/training/``), with its own shapes and wider parameter
ranges, so that it grades a model instead of echoing its training data.
``tests/test_evalset.py`` pins checksums of the smoke cases: a change to any
module here shows up as a test failure, and a changed family is a new family
(new name, new seeds), never a quiet edit of this one.

What it draws: a chest built from implicit surfaces (superellipse cavity
tapering to the apices, smooth-union mediastinum with heart, great vessels,
hila, spine; diaphragm domes; ribs, sternum, body wall, liver, stomach,
spleen, table), pulmonary arteries, veins and airways grown by space
colonisation from each hilum, fissures, lobulated / spiculated / part-solid /
ground-glass / calcified nodules (isolated, juxtavascular, juxtapleural),
confounders (emphysema, atelectasis, consolidation, effusion, calcified
lymph nodes), then the scanner (slice profile, kernel, textured noise,
circular field of view with padding, prone and feet-first positions).

Entry points: :func:`generate_case`, :func:`frozen_set`, :func:`write_case`;
``python -m bench.evalset OUT --set eval`` writes a whole set.
"""

from __future__ import annotations

from .case import Case, EvalNodule, write_case
from .frozen import frozen_set
from .generate import generate_case

__all__ = ["Case", "EvalNodule", "generate_case", "frozen_set", "write_case"]
