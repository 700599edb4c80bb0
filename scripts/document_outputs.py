"""Write docs/outputs.md: what a PACS receives from one job, from a real run of the shipped model.

A chest phantom (``ai.phantoms``) is written as a CT series, reconstructed,
segmented by the shipped bundle and written by the same code a worker runs
(``dicomnode.outputs.writer.write_outputs``).  The page shows the series
that arrive, the SEG's segments, the SR tree as dcmtk's ``dsrdump`` prints
it, the Key Object Selection and the key images.

Usage::

    .venv/bin/python scripts/document_outputs.py [--seed 10] [--matrix 256] [--doc docs/outputs.md]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("document_outputs")
sys.path.insert(0, str(ROOT))


def _collapse(lines: list[str]) -> list[str]:
    """Runs of identical lines as one line with a count (dsrdump lists every source image)."""
    out: list[str] = []
    for line in lines:
        if out and out[-1].split("  [x")[0] == line:
            head, _, n = out[-1].partition("  [x")
            out[-1] = f"{head}  [x{int(n.rstrip(']') or 1) + 1}]"
        else:
            out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=10, help="phantom seed (default 10: head-first supine, 5 nodules)")
    ap.add_argument("--matrix", type=int, default=256, help="rows and columns of the phantom")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "outputs.md", help="the page to write")
    ap.add_argument("--images", type=Path, default=None, help="where the key images go (default: images/ beside the page)")
    ap.add_argument("--max-images", type=int, default=3, help="key images shown on the page")
    args = ap.parse_args(argv)

    import highdicom as hd
    from PIL import Image
    from pydicom import dcmread

    from ai.bundle import load_bundle
    from ai.engine import Engine
    from ai.phantoms import generate
    from dicomnode.outputs.writer import write_outputs
    from dicomnode.testing.synthetic import write_phantom
    from dicomnode.volume.reconstruct import reconstruct

    logging.basicConfig(format="document_outputs: %(message)s")
    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        logger.error("dsrdump (dcmtk) is not installed")
        return 2
    images = args.images or args.doc.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(ROOT / "ai" / "bundles" / "chest-ct-lungs-nodules")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ph = generate(args.seed, matrix=args.matrix, slice_mm=(2.5, 2.5))
        files = write_phantom(ph, work / "ct")
        vol = reconstruct(files)
        by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        res = Engine(bundle, device="cpu").run(vol.array, vol.spacing, vol.direction)
        out = write_outputs([by_uid[u] for u in vol.sop_uids], vol, res, bundle, work / "out", job_key=f"phantom-{args.seed}/1")
        rows = []
        for o in out:
            ds = dcmread(o.path, stop_before_pixels=True)
            rows.append(f"| {ds.Modality} | {ds.SeriesNumber} | {ds.SeriesDescription} | {o.path.name} |")
        seg_file = next(o.path for o in out if o.kind == "seg")
        seg = dcmread(seg_file, stop_before_pixels=True)
        segments = []
        for s in seg.SegmentSequence:
            region = s.get("AnatomicRegionSequence")
            where = ""
            if region:
                mods = region[0].get("AnatomicRegionModifierSequence") or []
                where = region[0].CodeMeaning + (f" ({mods[0].CodeMeaning})" if mods else "")
            prop = s.SegmentedPropertyTypeCodeSequence[0]
            segments.append(
                f"| {s.SegmentNumber} | {s.SegmentLabel} | {prop.CodeMeaning} ({prop.CodingSchemeDesignator} {prop.CodeValue}) "
                f"| {where} | {s.TrackingID} |"
            )
        sr_file = next(o.path for o in out if o.kind == "sr")
        tree = subprocess.run([dsrdump, "-Ee", "-Ec", "+Pl", str(sr_file)], capture_output=True, text=True, check=True).stdout
        tree_lines = _collapse(tree.rstrip().splitlines())
        kos_file = next((o.path for o in out if o.kind == "kos"), None)
        kos_text = ""
        if kos_file is not None:
            kos = hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(kos_file))
            refs = kos.ContentSequence
            desc = next((i.TextValue for i in refs if i.ValueType == "TEXT"), "")
            n_refs = sum(1 for i in refs if i.ValueType == "IMAGE")
            kos_text = f"Document title: **{kos.ConceptNameCodeSequence[0].CodeMeaning}**; {n_refs} images flagged.\n\n> {desc}\n"
        pictures = []
        for i, o in enumerate([o for o in out if o.kind == "preview"][: args.max_images], start=1):
            ds = dcmread(o.path)
            name = f"outputs-key-image-{i}.png"
            Image.fromarray(ds.pixel_array).save(images / name)
            pictures.append(f"![key image {i}: {ds.ImageComments.split('. ')[0]}](images/{name})")
        for stale in images.glob("outputs-key-image-*.png"):  # an earlier run's, when this one found fewer
            number = stale.stem.rsplit("-", 1)[-1]
            if number.isdigit() and int(number) > len(pictures):
                stale.unlink()
    found = ", ".join(
        f"{f.name} ({f.where}, {f.lesion.axes.long_mm:.1f} x {f.lesion.axes.short_mm:.1f} mm)" if f.lesion.axes else f.name
        for f in res.findings
    ) or "none"
    truth = ", ".join(f"{n.diameter_mm:.0f} mm {n.kind} ({n.side})" for n in ph.nodules) or "none"
    doc = f"""# What a PACS receives

<!-- Generated by scripts/document_outputs.py --seed {args.seed} --matrix {args.matrix}; do not edit by hand. -->

One job of the shipped model **{bundle.name} {bundle.version}** ({bundle.intended_use}) on a chest phantom
(`ai.phantoms` seed {args.seed}, {ph.position}, {args.matrix}x{args.matrix}, {len(vol.sop_uids)} slices of 2.5 mm),
written by the same code as a worker (`dicomnode.outputs.writer.write_outputs`).
The phantom holds: {truth}. The model found: {found}.
This is a demonstration model: it misses nodules and finds some that are not there (see its model card).

Every object copies the source's patient and study exactly and gets a series of its own.
A finding has one number everywhere ("nodule 1" is the largest), and one Tracking UID, shared by
its SEG segment, its SR group, its key image (ImageComments) and the Key Object Selection's description.

## Series

| Modality | Series | Description | File |
|---|---|---|---|
{chr(10).join(rows)}

## SEG: one segment per finding, then the organs

| Segment | Label | Property type | Anatomic region (side) | Tracking ID |
|---|---|---|---|---|
{chr(10).join(segments)}

## SR (TID 1500), as `dsrdump -Ee -Ec +Pl` prints it

Repeated lines (one per source image) are shown once with a count.

```
{chr(10).join(tree_lines)}
```

## Key Object Selection

{kos_text}
## Key images (one per finding, largest first)

Pixels as stored (as a viewer shows that image number), with the patient's directions at the edges.

{chr(10).join(pictures)}
"""
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(doc)
    print(f"wrote {args.doc} ({len(res.findings)} finding(s), {len(pictures)} key image(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
