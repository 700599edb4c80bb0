"""Realistic procedural chest-CT phantoms for training and tests: vessels, airways, fissures, confounders and nodules.

Anatomy with pulmonary vessel and bronchial trees, fissures, ribs, spine,
scapulae, heart, aorta, diaphragm domes, body habitus and arms; nodules of
four kinds at three kinds of sites; confounders (emphysema, consolidation,
atelectasis, effusion, and in the lung root hilar lymph nodes and vessel
confluences); and the
acquisition (field of view, slice spacing, kernel, noise, padding, patient
position with its direction cosines).

Labels: 0 background, 1 right lung, 2 left lung, 3 nodule (the patient's
right and left).  ``generate(seed)`` is deterministic.
"""

from ai.phantoms.generator import generate, scan_protocol
from ai.phantoms.records import (
    AIRWAY,
    CONFOUNDER,
    FISSURE,
    LABEL_NAMES,
    LEFT_LUNG,
    NODULE,
    RIGHT_LUNG,
    VESSEL,
    Nodule,
    NoduleKind,
    NoduleSite,
    Phantom,
    Tree,
)

__all__ = [
    "AIRWAY", "CONFOUNDER", "FISSURE", "LABEL_NAMES", "LEFT_LUNG", "NODULE", "RIGHT_LUNG", "VESSEL",
    "Nodule", "NoduleKind", "NoduleSite", "Phantom", "Tree", "generate", "scan_protocol",
]
