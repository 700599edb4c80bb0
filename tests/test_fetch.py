"""``dicomnode fetch``: studies pulled from Orthanc by C-FIND and C-MOVE, processed as if pushed.

Orthanc (Debian's package) is the source PACS; the node runs in-process on an
OS-assigned port and Orthanc learns it as a move destination through its own
REST API.  A chest CT fetched by C-MOVE is processed and its SEG and SR arrive
back in Orthanc's study by STOW-RS; a backfill of three studies, interrupted
and resumed, fetches each once; a source that does not know the node, and a
study it does not hold, fail in words.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicomnode.node import Node
from dicomnode.testing.synthetic import SeriesSpec, write_series
from tests.conftest import jobs_of, series_of
from tests.helpers import storescu, wait_for
from tests.peers import Orthanc

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    o = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    yield o
    o.stop()


def source_toml(o: Orthanc) -> str:
    return f'[[sources]]\nname = "orthanc"\nae_title = "{o.ae}"\nhost = "127.0.0.1"\nport = {o.port}\n'


def know_node(o: Orthanc, node: Node) -> None:
    """Orthanc's DICOM modalities get the node's AE title, host and (OS-assigned) port: it may move studies there."""
    o.put("/modalities/dicomnode", {"AET": node.cfg.node.ae_title, "Host": "127.0.0.1", "Port": node.cfg.node.port})


def fetch(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """``dicomnode fetch`` with the node's configuration, its listener on the port the OS gave it (as a fixed port would be)."""
    assert node.cfg.source is not None
    cfg = node.cfg.source.with_name("fetch.toml")
    cfg.write_text(node.cfg.source.read_text().replace("\nport = 0\n", f"\nport = {node.cfg.node.port}\n", 1))
    return subprocess.run([sys.executable, "-m", "dicomnode", "fetch", "--config", str(cfg), "--from", "orthanc", "-q", *args],
                          capture_output=True, text=True, timeout=300)


def serve_wado(study: str, files: list[Path], *, cut: bool = False) -> Any:
    """A DICOMweb source on 127.0.0.1 that finds ``study`` (QIDO-RS) and sends ``files`` (WADO-RS); ``cut``: the stream
    stops 100 bytes short, and so does the connection.  Returns the running server (``shutdown()`` it)."""
    import http.server
    import json
    import threading

    class Wado(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/dicom-web/studies?"):  # QIDO-RS: the study is there
                data = json.dumps([{"0020000D": {"vr": "UI", "Value": [study]}}]).encode()
                ctype, length = "application/dicom+json", None
            else:
                data = b"".join(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + f.read_bytes() + b"\r\n" for f in files) + b"--B--\r\n"
                ctype, length = 'multipart/related; type="application/dicom"; boundary=B', len(data)
                if cut:
                    data = data[: len(data) - 107]  # into the last instance
                    self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length or len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wado)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wado_source(server: Any) -> str:
    return f'[[sources]]\nname = "orthanc"\nkind = "dicomweb"\nurl = "http://127.0.0.1:{server.server_address[1]}/dicom-web"\n'


@pytest.mark.parametrize("retrieve", ["c-move", "wado-rs"])
def test_a_fetched_study_is_processed_and_its_results_reach_orthanc_by_stow_rs(
    node_factory: Callable[..., Node], orthanc: Orthanc, tmp_path: Path, retrieve: str,
) -> None:
    """C-MOVE (C-FIND first), or QIDO-RS and WADO-RS: the chest CT is processed, and its SEG and SR go back by STOW-RS."""
    from ai.phantoms import generate
    from dicomnode.testing.synthetic import write_phantom
    from tests.test_pipeline import WORKER

    files = write_phantom(generate(4247, matrix=160, slice_mm=(4.0, 5.0)), tmp_path / "ct")
    assert storescu(orthanc.port, files, called=orthanc.ae).returncode == 0
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    web = f'[[destinations]]\nname = "orthanc-web"\nkind = "dicomweb"\nurl = "{orthanc.dicomweb_url}"\n'
    src = source_toml(orthanc) if retrieve == "c-move" else web_source(orthanc)
    node = node_factory(extra_toml=WORKER + web + src, series_toml="quiet_seconds = 5")
    know_node(orthanc, node)
    r = fetch(node, "--study", study)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(files)} instance(s) sent to {node.cfg.node.ae_title} by orthanc" in r.stdout
    [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state in ("done", "failed", "delivery_failed")] or None, 240, what="the job")
    assert job.state == "done", job.error
    [series] = [s for s in series_of(node) if s.id == job.series_id]
    # The job's series records where it came from: the source's C-MOVE association, or the DICOMweb source's AE title;
    # and the job says that its study was fetched, and from which source (a push from the same PACS would not).
    assert series.calling_ae == (orthanc.ae if retrieve == "c-move" else "ORTHANC-WEB")
    from storage.listings import list_jobs

    assert list_jobs(node.engine, job_id=job.id)[0].fetched_from == "orthanc"
    shown = subprocess.run([sys.executable, "-m", "dicomnode", "jobs", str(job.id), "--config", str(node.cfg.source)],
                           capture_output=True, text=True, timeout=60)
    assert "(fetched from source orthanc)" in shown.stdout, shown.stdout + shown.stderr
    # The SEG and SR are now in Orthanc's copy of the study, beside the CT, by STOW-RS.
    [oid] = orthanc.get("/studies")

    def modalities() -> set[str]:
        return {s["MainDicomTags"].get("Modality") for s in orthanc.get(f"/studies/{oid}/series")}

    wait_for(lambda: modalities() >= {"CT", "SEG", "SR"}, 60, what="SEG and SR in Orthanc's study")


def three_studies(tmp_path: Path, orthanc: Orthanc) -> list[str]:
    uids = []
    for i in range(3):
        spec = SeriesSpec(slices=4, rows=16, columns=16, seed=f"backfill-{i}", patient_id=f"BF-{i}")
        files = write_series(spec, tmp_path / f"bf{i}")
        assert storescu(orthanc.port, files, called=orthanc.ae).returncode == 0
        uids.append(str(spec.study_uid))
    return uids


def test_a_backfill_interrupted_and_resumed_fetches_each_study_once(
    node_factory: Callable[..., Node], orthanc: Orthanc, tmp_path: Path,
) -> None:
    from storage.study import study_series

    uids = three_studies(tmp_path, orthanc)
    node = node_factory(extra_toml="[worker]\nenabled = false\n" + source_toml(orthanc), series_toml="quiet_seconds = 2")
    know_node(orthanc, node)
    first = fetch(node, "--since", "2000-01-01", "--modality", "CT", "--limit", "2")  # stopped after two
    assert first.returncode == 0, first.stdout + first.stderr
    assert "orthanc: 3 studies from 20000101" in first.stdout and "fetched 2 studies; 0 skipped" in first.stdout
    held = wait_for(lambda: (h := [u for u in uids if study_series(node.engine, u)]) and len(h) == 2 and h, 60, what="two studies")
    again = fetch(node, "--since", "2000-01-01", "--modality", "CT")  # resumed: only the third is new
    assert again.returncode == 0 and "fetched 1 study; 2 skipped" in again.stdout, again.stdout + again.stderr
    wait_for(lambda: all(study_series(node.engine, u) for u in uids), 60, what="the third study")
    assert set(held) < set(uids)
    wait_for(lambda: len(jobs_of(node)) == 3, 60, what="one job per study")
    assert all(len(study_series(node.engine, u)) == 1 for u in uids)  # each once
    assert len({j.series_id for j in jobs_of(node)}) == 3


def test_a_source_that_does_not_know_the_node_and_an_unknown_study_fail_in_words(
    node_factory: Callable[..., Node], orthanc: Orthanc, tmp_path: Path,
) -> None:
    [study, *_] = three_studies(tmp_path, orthanc)
    node = node_factory(extra_toml="[worker]\nenabled = false\n" + source_toml(orthanc))
    r = fetch(node, "--study", study)  # Orthanc knows no modality for the node yet: it refuses the requester
    assert r.returncode == 1 and "closed the association instead of answering our C-FIND" in r.stderr, r.stderr
    assert "add DICOMNODE with this node's host and port to its DICOM modalities" in r.stderr
    # A PACS that lets anyone ask but does not know where to send: Orthanc answers 0xC000 (others 0xA801, see below).
    lax = Orthanc(tmp_path / "lax", any_mover=True).start()
    try:
        assert storescu(lax.port, write_series(SeriesSpec(slices=2, rows=8, columns=8, seed="lax"), tmp_path / "lax-ct"),
                        called=lax.ae).returncode == 0
        lax_cfg = Path(str(node.cfg.source)).read_text().replace(f"port = {orthanc.port}\n", f"port = {lax.port}\n")  # its source only
        (tmp_path / "lax.toml").write_text(lax_cfg)
        r = subprocess.run([sys.executable, "-m", "dicomnode", "fetch", "--config", str(tmp_path / "lax.toml"), "--from", "orthanc",
                            "-q", "--study", str(SeriesSpec(seed="lax").study_uid)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "status 0xC000" in r.stderr, r.stderr
        assert "check that it lists DICOMNODE with this node's host and port among its DICOM modalities" in r.stderr
    finally:
        lax.stop()
    know_node(orthanc, node)
    r = fetch(node, "--study", "1.2.3.4.5.6.7.8.9")
    assert r.returncode == 1 and "orthanc holds no study with that Study Instance UID" in r.stderr, r.stdout + r.stderr
    r = fetch(node, "--study", study, "--since", "2024-01-01")
    assert r.returncode == 1 and "not both" in r.stderr


def web_source(o: Orthanc) -> str:
    return f'[[sources]]\nname = "orthanc"\nkind = "dicomweb"\nurl = "{o.dicomweb_url}"\nae_title = "ORTHANC-WEB"\n'


def test_a_dicomweb_source_is_searched_by_qido_rs_and_read_by_wado_rs(
    node_factory: Callable[..., Node], orthanc: Orthanc, tmp_path: Path,
) -> None:
    from storage.study import study_series

    uids = three_studies(tmp_path, orthanc)
    node = node_factory(extra_toml="[worker]\nenabled = false\n" + web_source(orthanc), series_toml="quiet_seconds = 2")
    one = fetch(node, "--study", uids[1])
    assert one.returncode == 0 and "4 instance(s) sent to DICOMNODE by orthanc" in one.stdout, one.stdout + one.stderr
    [s] = wait_for(lambda: [s for s in series_of(node) if s.instance_count == 4] or None, 30, what="the fetched series")
    assert s.calling_ae == "ORTHANC-WEB"  # where it came from
    assert not list(node.cfg.node.storage_dir.glob("dicomnode-fetch-*"))  # the downloaded copies are gone
    rest = fetch(node, "--since", "2000-01-01", "--modality", "CT")  # a backfill skips the study it holds
    assert rest.returncode == 0 and "fetched 2 studies; 1 skipped" in rest.stdout, rest.stdout + rest.stderr
    wait_for(lambda: all(study_series(node.engine, u) for u in uids), 30, what="every study")
    unknown = fetch(node, "--study", "1.2.3.4.5")
    assert unknown.returncode == 1 and "holds no study with that Study Instance UID (its search found none)" in unknown.stderr


def test_a_wado_rs_stream_cut_short_stores_nothing(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    files = write_series(SeriesSpec(slices=3, rows=16, columns=16, seed="cut-wado"), tmp_path / "ct")
    server = serve_wado(str(SeriesSpec(seed="cut-wado").study_uid), files, cut=True)
    try:
        node = node_factory(extra_toml="[worker]\nenabled = false\n" + wado_source(server))
        r = fetch(node, "--study", str(SeriesSpec(seed="cut-wado").study_uid))
        assert r.returncode == 1 and "the WADO-RS stream was cut short after 2 instance(s); nothing of the study was stored" in r.stderr, r.stderr
        assert series_of(node) == [] and not list(node.cfg.node.incoming_dir.rglob("*.dcm"))
    finally:
        server.shutdown()


def test_an_admin_fetches_a_study_from_the_status_page(node_factory: Callable[..., Node], orthanc: Orthanc, tmp_path: Path) -> None:
    import json

    from tests.webclient import Client, admin_password

    [study, *_] = three_studies(tmp_path, orthanc)
    node = node_factory(extra_toml="[worker]\nenabled = false\n" + source_toml(orthanc), web_toml="enabled = true\nport = 0")
    know_node(orthanc, node)
    assert node.web_port is not None
    web, auth = Client(node.web_port), ("admin", admin_password(node))
    page = web.get("/fetch", auth=auth)
    assert page.status == 200 and '<option value="orthanc">' in page.text and 'action="/api/fetch"' in page.text
    assert 'href="/fetch">fetch a study</a>' in web.get("/", auth=auth).text

    def ask(body: dict[str, str]) -> tuple[int, str]:
        a = web.request("POST", "/api/fetch", {"Content-Type": "application/json"}, json.dumps(body).encode(), auth=auth)
        return a.status, a.text

    assert ask({"source": "orthanc", "study": "1.2; DROP"})[0] == 400
    status, text = ask({"source": "nope", "study": "1.2.3"})
    assert status == 409 and "no source named 'nope'" in text
    status, text = ask({"source": "orthanc", "study": study})
    assert status == 202 and "fetching the study from orthanc" in text, text
    wait_for(lambda: [s for s in series_of(node) if s.instance_count == 4] or None, 30, what="the fetched series")
    [job] = wait_for(lambda: jobs_of(node) or None, 60, what="its job")
    from storage.listings import list_jobs

    assert list_jobs(node.engine, job_id=job.id)[0].fetched_from == "orthanc"
    assert "(fetched from orthanc)" in web.get("/", auth=auth).text


def test_a_source_that_retrieves_by_c_get(node_factory: Callable[..., Node], orthanc: Orthanc, tmp_path: Path) -> None:
    """C-GET: the source sends on the fetch's own association; the study is then stored through the node's listener."""
    [study, *_] = three_studies(tmp_path, orthanc)
    node = node_factory(extra_toml="[worker]\nenabled = false\n" + source_toml(orthanc) + 'retrieve = "c-get"\n')
    know_node(orthanc, node)  # Orthanc answers C-GET from the modalities it knows
    r = fetch(node, "--study", study)
    assert r.returncode == 0 and "4 instance(s) sent to DICOMNODE by orthanc" in r.stdout, r.stdout + r.stderr
    [s] = wait_for(lambda: [s for s in series_of(node) if s.instance_count == 4] or None, 30, what="the fetched series")
    assert s.calling_ae == orthanc.ae and not list(node.cfg.node.storage_dir.glob("dicomnode-fetch-*"))


def test_a_study_fetched_by_wado_rs_is_stored_through_a_listener_that_requires_tls(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    """A node whose listener speaks only TLS (and, the second time, requires client certificates) still fetches.

    The fetch trusts exactly the listener's own certificate and, when asked, presents it as its client certificate.
    """
    from tests.test_tls import make_cert

    files = write_series(SeriesSpec(slices=3, rows=16, columns=16, seed="tls-wado"), tmp_path / "ct")
    study = str(SeriesSpec(seed="tls-wado").study_uid)
    server = serve_wado(study, files)
    cert, key = make_cert(tmp_path)
    try:
        for subdir, mutual in (("tls", ""), ("mtls", f'ca_file = "{cert}"\nrequire_client_cert = true\n')):
            node = node_factory(f'[node.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n{mutual}', subdir=subdir,
                                extra_toml="[worker]\nenabled = false\n" + wado_source(server))
            r = fetch(node, "--study", study)
            assert r.returncode == 0 and "3 instance(s)" in r.stdout, (subdir, r.stdout + r.stderr)
            wait_for(lambda node=node: [s for s in series_of(node) if s.instance_count == 3] or None, 30, what="the series")
            assert not list(node.cfg.node.storage_dir.glob("dicomnode-fetch-*"))
    finally:
        server.shutdown()
