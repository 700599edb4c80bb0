"""Every UID the node makes, and how UIDs are encoded on the wire.

Outputs must be the *same* objects when a job is written again (``dicomnode
retry`` re-sends, and the PACS sees a re-send, not a new study), so their
UIDs derive from the job key.  The node has no registered UID root of its
own, so its UIDs live in the ``2.25`` arc (PS3.5 B.2): the decimal form of a
name-based UUID (RFC 9562, version 5) in the node's own UUID namespace.
pydicom's root (``1.2.826.0.1.3680043.8.498.``) belongs to pydicom.

Why not :func:`pydicom.uid.generate_uid`: with ``prefix=None`` it makes
``2.25`` UIDs but random ones (it ignores ``entropy_srcs`` then), and with a
prefix it hashes ``"".join(entropy_srcs)``, so ``["ab", "c"]`` and
``["a", "bc"]`` give the same UID.  :func:`derived_uid` encodes the parts
unambiguously instead.
"""

from __future__ import annotations

import json
import uuid

from pydicom.uid import UID

UUID_ARC = "2.25."
NAMESPACE = uuid.UUID("9845621c-6db2-4da5-b8de-b04bf7258791")  # dicomnode's UUID namespace (random, fixed forever)
# derived_uid("dicomnode", "implementation"), written out so that it can never change by accident (a test checks it).
IMPLEMENTATION_CLASS_UID = UID("2.25.313008405520672490876211106074881582472")


def derived_uid(*parts: object) -> UID:
    """A deterministic UID in the 2.25 arc: the same ``parts`` always give the same UID.

    Parameters
    ----------
    *parts : object
        What the UID stands for, e.g. ``("dicomnode-output", job_key, "seg", ...)``;
        each part is turned into text with :func:`str`.

    Returns
    -------
    pydicom.uid.UID
        ``2.25.<decimal UUID>``, at most 44 characters.
    """
    name = json.dumps([str(p) for p in parts], ensure_ascii=False)  # unambiguous: no two part lists collide
    return UID(UUID_ARC + str(uuid.uuid5(NAMESPACE, name).int))


def pad_uid(value: str) -> bytes:
    """A UID value as encoded in DICOM: ASCII, padded with one NUL to an even length (PS3.5 6.2)."""
    b = value.encode("ascii")
    return b + b"\x00" if len(b) % 2 else b
