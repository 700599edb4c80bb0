"""The status page, JSON API, /metrics and /healthz of a running node; the page in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomnode.node import Node
from storage.outbox import list_deliveries
from storage.queue import DeliveryTarget, OutputRecord, claim_job, finish_job
from tests.conftest import wait_for_jobs
from tests.helpers import require_tool, storescu, wait_for
from tests.peers import free_port

WEB = "enabled = true\nport = 0"


def get(node: Node, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.web_port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fake_preview(path: Path) -> Dataset:
    """A small RGB Secondary Capture: a red square on grey."""
    img = np.full((64, 96, 3), 80, dtype=np.uint8)
    img[16:48, 32:64] = (220, 30, 30)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 96, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = img.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_status_api_metrics_and_health(node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]) -> None:
    node = node_factory(web_toml=WEB)
    assert get(node, "/healthz") == (200, json.dumps({"status": "ok", "listener": True, "database": True}, separators=(",", ":")).encode())
    files = make_series("web", slices=3)
    assert storescu(node.cfg.node.port, files).returncode == 0
    [job] = wait_for_jobs(node, 1)
    status, body = get(node, "/metrics")
    text = body.decode()
    assert status == 200
    assert re.search(r'^dicomnode_instances_received_total\{calling_ae="STORESCU"\} 3\.0$', text, re.M), text
    assert re.search(r'^dicomnode_jobs\{state="queued"\} 1\.0$', text, re.M)
    assert re.search(r"^dicomnode_queue_depth 1\.0$", text, re.M)
    assert "dicomnode_stage_seconds" in text
    status, body = get(node, "/api/jobs")
    [j] = json.loads(body)
    assert status == 200 and j["id"] == job.id and j["state"] == "queued" and j["modality"] == "CT"
    status, body = get(node, f"/api/jobs/{job.id}")
    assert status == 200 and json.loads(body)["deliveries"] == []
    assert get(node, "/api/jobs/999")[0] == 404
    assert get(node, f"/jobs/{job.id}/preview.png")[0] == 404
    status, body = get(node, "/")
    page = body.decode()
    assert status == 200 and f'id="job-{job.id}"' in page and "queued" in page
    assert "Phantom" not in page and "PHANTOM" not in page  # no patient name or ID on the page


def test_the_page_shows_a_finished_job_with_its_preview_in_chromium(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    chromium = require_tool("chromium")
    down = free_port()  # a PACS that is down: the delivery stays pending, retried in a minute
    node = node_factory(web_toml=WEB, extra_toml=(
        "[worker]\nenabled = false\n[delivery]\nbackoff_seconds = 60\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {down}\n'
    ))
    assert storescu(node.cfg.node.port, make_series("shown", slices=2)).returncode == 0
    [job] = wait_for_jobs(node, 1)
    claimed = claim_job(node.engine, "test", 60)
    assert claimed is not None and claimed.id == job.id
    rel = f"outputs/{job.id}/preview.dcm"
    ds = fake_preview(node.cfg.node.storage_dir / rel)
    out = OutputRecord("preview", rel, ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ExplicitVRLittleEndian)
    assert finish_job(node.engine, job.id, "test", timings={"reconstruct": 0.4, "infer": 2.5}, model="chest 0.1", output_dir=str(job.id),
                      outputs=[out], targets=[DeliveryTarget("pacs")])
    # The sender's first attempt fails (nobody listens) and is logged before we look.
    node.sender.wake()
    wait_for(lambda: any(d.last_error for d in list_deliveries(node.engine, job.id)), 20, what="the first delivery attempt")
    status, png = get(node, f"/jobs/{job.id}/preview.png")
    assert status == 200 and png.startswith(b"\x89PNG")
    url = f"http://127.0.0.1:{node.web_port}/"
    shot = tmp_path / "status.png"  # kept by pytest under its basetemp for people to look at
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900", "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    row = re.search(rf'<tr id="job-{job.id}">.*?</tr>', dom.stdout, re.S)
    assert row is not None, dom.stdout[:2000]
    assert "delivering" in row.group(0) and "chest 0.1" in row.group(0) and "infer 2.5s" in row.group(0)
    assert f"DICOM port {node.cfg.node.port}" in dom.stdout
    assert "Delivery log" in dom.stdout and "cannot connect to PACS@127.0.0.1" in dom.stdout
    assert 'data-loaded="1"' in row.group(0)  # the browser loaded the preview image
    r = subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 10_000, r.stderr[-2000:]
