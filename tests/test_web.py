"""The status page, JSON API, /metrics and /healthz of a running node; the page in headless Chromium."""

from __future__ import annotations

import json
import re
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
from tests.browser import Browser
from tests.conftest import wait_for_jobs
from tests.helpers import storescu, wait_for
from tests.peers import free_port
from tests.webclient import Client, admin_password

WEB = "enabled = true\nport = 0"


def get(node: Node, path: str) -> tuple[int, bytes]:
    """GET as the first administrator, with HTTP Basic (as a script or Prometheus would)."""
    assert node.web_port is not None
    r = Client(node.web_port).get(path, auth=("admin", admin_password(node)))
    return r.status, r.body


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
    health = Client(node.web_port or 0).get("/healthz")  # open, without a login
    assert health.status == 200 and health.json()["status"] == "ok", health.text
    assert health.json()["listener"] is True and health.json()["database"] is True
    files = make_series("web", slices=3)
    assert storescu(node.cfg.node.port, files).returncode == 0
    [job] = wait_for_jobs(node, 1)
    status, body = get(node, "/metrics")
    text = body.decode()
    assert status == 200
    # STORESCU is in no allow-list, destination or rule, so it is counted as "other" (peers cannot mint labels).
    assert re.search(r'^dicomnode_instances_received_total\{calling_ae="other"\} 3\.0$', text, re.M), text
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
    shot = tmp_path / "status.png"  # kept by pytest under its basetemp for people to look at
    with Browser(tmp_path / "chromium") as browser:
        browser.goto(f"http://127.0.0.1:{node.web_port}/")  # redirected to the login form
        assert browser.evaluate("location.pathname") == "/login"
        browser.submit_form('form[action="/login"]', {"username": "admin", "password": admin_password(node)})
        assert browser.evaluate("location.pathname") == "/"
        dom = browser.dom()
        row = re.search(rf'<tr id="job-{job.id}">.*?</tr>', dom, re.S)
        assert row is not None, dom[:2000]
        assert "delivering" in row.group(0) and "chest 0.1" in row.group(0) and "infer 2.5s" in row.group(0)
        assert f"DICOM port {node.cfg.node.port}" in dom
        assert "Delivery log" in dom and "cannot connect to PACS@127.0.0.1" in dom
        wait_for(lambda: browser.images_loaded(f"#job-{job.id} img.preview"), 30, what="the preview image in the browser")
        assert browser.screenshot(shot).stat().st_size > 10_000
