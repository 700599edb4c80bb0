"""The node's UIDs: deterministic, valid, in the 2.25 arc, never under pydicom's root."""

from __future__ import annotations

import uuid

from pydicom.uid import PYDICOM_ROOT_UID, UID

from dicomnode.dicom.uids import IMPLEMENTATION_CLASS_UID, NAMESPACE, derived_uid, pad_uid


def test_derived_uids_are_valid_uuid_uids() -> None:
    u = derived_uid("dicomnode-output", "1.2.3/1", "seg", "binary-sparse", "instance", 0)
    assert u.is_valid and len(u) <= 64
    assert u.startswith("2.25.") and not u.startswith(PYDICOM_ROOT_UID)
    value = int(u.removeprefix("2.25."))
    assert 0 < value < 2**128 and str(value) == u.removeprefix("2.25.")  # a UUID as an integer, no leading zero
    assert uuid.UUID(int=value).version == 5


def test_the_same_parts_give_the_same_uid_and_different_parts_never_collide() -> None:
    assert derived_uid("a", 1) == derived_uid("a", 1)
    assert derived_uid("a", 1) != derived_uid("a", 2)
    # the parts are encoded unambiguously (a plain join would make these equal)
    assert derived_uid("ab", "c") != derived_uid("a", "bc")
    assert derived_uid("a/b", "c") != derived_uid("a", "b/c")


def test_the_implementation_uid_never_changes() -> None:
    assert IMPLEMENTATION_CLASS_UID == derived_uid("dicomnode", "implementation")
    assert NAMESPACE == uuid.UUID("9845621c-6db2-4da5-b8de-b04bf7258791")
    assert UID(IMPLEMENTATION_CLASS_UID).is_valid


def test_uid_padding() -> None:
    assert pad_uid("1.2") == b"1.2\x00"
    assert pad_uid("1.23") == b"1.23"
