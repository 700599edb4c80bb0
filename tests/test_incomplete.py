"""Known-incomplete series: an aborted association or a refused instance holds the series back.

Such a series waits ``incomplete_timeout_seconds`` for the rest; if it is
still incomplete then, it is not processed (``series.process_incomplete``
is off by default) and its job says what is missing.  When the sender sends
the series again, the series completes again and is processed once.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.dicom import status
from dicomnode.node import Node
from tests.conftest import jobs_of, series_of
from tests.helpers import storescu, wait_for

WORKER = "[worker]\nenabled = true\ndevice = \"cpu\"\npoll_seconds = 0.1\n[selection]\nstudy_quiet_seconds = 1\n"
SERIES = "quiet_seconds = 0.5\nincomplete_timeout_seconds = 2"


def _associate(node: Node) -> object:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    return assoc


def test_an_aborted_association_gives_no_result_until_the_rest_arrives(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory(series_toml=SERIES, extra_toml=WORKER)
    files = make_series("aborted", slices=24)
    assoc = _associate(node)
    for f in files[:11]:  # the scanner stops at slice 11 of 24
        assert int(assoc.send_c_store(f).Status) == status.SUCCESS  # type: ignore[attr-defined]
    assoc.abort()  # type: ignore[attr-defined]
    [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state == "incomplete"] or None, 30, what="the incomplete job")
    assert "aborted" in (job.error or "") and "not processed" in (job.error or ""), job.error
    assert not node.cfg.node.outputs_dir.exists() or not list(node.cfg.node.outputs_dir.rglob("*.dcm"))  # nothing written
    # The sender sends the whole series again: it completes again (version 2) and is processed, once.
    assert storescu(node.cfg.node.port, files).returncode == 0
    done = wait_for(
        lambda: [j for j in jobs_of(node) if j.version == 2 and j.state not in ("queued", "running")] or None, 60,
        what="the second version's job",
    )
    assert done[0].state != "incomplete", done[0].error
    assert [s.instance_count for s in series_of(node)] == [24]


def test_a_refused_instance_holds_the_series_back(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last instance is refused (disk full): no gap shows in the geometry, the release would complete it."""
    import storage.files

    node = node_factory(series_toml=SERIES, extra_toml=WORKER)
    files = make_series("refused", slices=24)
    assoc = _associate(node)
    for f in files[:-1]:
        assert int(assoc.send_c_store(f).Status) == status.SUCCESS  # type: ignore[attr-defined]
    real_write = storage.files.os.write

    def full_disk(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.files.os, "write", full_disk)
    assert int(assoc.send_c_store(files[-1]).Status) == status.REFUSED_OUT_OF_RESOURCES  # type: ignore[attr-defined]
    monkeypatch.setattr(storage.files.os, "write", real_write)
    assoc.release()  # type: ignore[attr-defined]
    [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state == "incomplete"] or None, 30, what="the incomplete job")
    assert "an instance was refused" in (job.error or ""), job.error
    assert job.completion_reason == "incomplete_timeout"
