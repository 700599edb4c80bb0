"""Model bundles: the three weight formats agree, MONAI bundles import, broken bundles explain themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

from ai.bundle import BundleError, check_bundle, load_bundle

ARCH = {"name": "UNet", "params": {"channels": [4, 8], "strides": [2], "num_res_units": 1}}


def manifest(fmt: str, file: str) -> dict[str, object]:
    return {
        "name": f"tiny-{fmt}",
        "version": "1.0.0",
        "task": "segmentation",
        "modalities": ["CT"],
        "body_parts": ["CHEST"],
        "input": {"spacing": [1.5, 1.5, 1.5], "orientation": "RAS", "normalization": {"kind": "window", "low": -1000, "high": 1000}},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "batch_size": 2},
        "labels": [
            {"value": 1, "name": "lung", "snomed": {"code": "39607008", "meaning": "Lung"}, "color": [0, 128, 255]},
            {"value": 2, "name": "nodule", "snomed": {"code": "27925004", "meaning": "Nodule"}, "color": [255, 64, 0], "lesion": True},
        ],
        "intended_use": "demonstration; not for diagnosis",
        "weights": {"format": fmt, "file": file, **({"architecture": ARCH} if fmt == "state_dict" else {})},
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    net = UNet(3, 1, 3, **ARCH["params"]).eval()  # type: ignore[arg-type]
    x = torch.randn(1, 1, 16, 16, 16)
    out: dict[str, Path] = {}
    for fmt, file in (("state_dict", "model.pt"), ("torchscript", "model.ts"), ("onnx", "model.onnx")):
        d = tmp_path_factory.mktemp(fmt)
        if fmt == "state_dict":
            torch.save(net.state_dict(), d / file)
        elif fmt == "torchscript":
            torch.jit.trace(net, x).save(str(d / file))
        else:
            torch.onnx.export(net, x, str(d / file), dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "b"}, "output": {0: "b"}}, opset_version=17)
        (d / "manifest.json").write_text(json.dumps(manifest(fmt, file)))
        out[fmt] = d
    return out


def test_formats_agree_within_1e4(bundles: dict[str, Path]) -> None:
    x = torch.randn(2, 1, 16, 16, 16)
    results = {}
    for fmt, path in bundles.items():
        b = check_bundle(path)
        assert b.out_channels == 3 and b.labels[1].lesion and b.spacing == (1.5, 1.5, 1.5)
        with torch.inference_mode():
            results[fmt] = b.predictor(torch.device("cpu"))(x)
    torch.testing.assert_close(results["torchscript"], results["state_dict"], atol=1e-4, rtol=0)
    torch.testing.assert_close(results["onnx"], results["state_dict"], atol=1e-4, rtol=0)


def test_monai_model_zoo_layout(bundles: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "spleen_ct_segmentation"
    (d / "configs").mkdir(parents=True)
    (d / "models").mkdir()
    (d / "models" / "model.ts").write_bytes((bundles["torchscript"] / "model.ts").read_bytes())
    (d / "configs" / "metadata.json").write_text(json.dumps({
        "name": "Spleen CT segmentation", "version": "0.5.9", "description": "spleen",
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen", "2": "other"}}}},
    }))
    (d / "configs" / "inference.json").write_text(json.dumps({
        "preprocessing": {"transforms": [{"_target_": "Spacingd", "pixdim": [1.5, 1.5, 2.0]}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 4, "overlap": 0.5},
    }))
    b = check_bundle(d)
    assert (b.name, b.version, b.roi_size, b.overlap, b.batch_size) == ("Spleen CT segmentation", "0.5.9", (16, 16, 16), 0.5, 4)
    assert [lb.name for lb in b.labels] == ["spleen", "other"] and b.spacing == (1.5, 1.5, 2.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("labels"), "missing 'labels'"),
        (lambda m: m.update(task="detection"), "task must be one of segmentation, classification"),
        (lambda m: m["weights"].update(file="nope.pt"), "weights file 'nope.pt' does not exist"),
        (lambda m: m["inference"].update(roi_size=[16, 16]), "roi_size must be three positive integers"),
        (lambda m: m["labels"][0].update(color=[300, 0, 0]), "color must be three integers 0-255"),
        (lambda m: m["labels"][1].update(value=5), "label values must be 1..N"),
    ],
)
def test_broken_manifest_says_what_is_wrong(bundles: dict[str, Path], tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((bundles["state_dict"] / "manifest.json").read_text())
    change(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "model.pt").write_bytes((bundles["state_dict"] / "model.pt").read_bytes())
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path)


def test_weights_that_do_not_fit_the_architecture(bundles: dict[str, Path], tmp_path: Path) -> None:
    m = json.loads((bundles["state_dict"] / "manifest.json").read_text())
    m["weights"]["architecture"] = {"name": "UNet", "params": {"channels": [8, 16], "strides": [2], "num_res_units": 1}}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "model.pt").write_bytes((bundles["state_dict"] / "model.pt").read_bytes())
    with pytest.raises(BundleError, match="weights model.pt do not load"):
        check_bundle(tmp_path)
    m = json.loads((bundles["torchscript"] / "manifest.json").read_text())
    m["labels"].append({"value": 3, "name": "extra"})
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "model.ts").write_bytes((bundles["torchscript"] / "model.ts").read_bytes())
    with pytest.raises(BundleError, match=r"outputs 3 channels, but 3 label\(s\) need 4"):
        check_bundle(tmp_path)


def test_models_command(bundles: dict[str, Path], tmp_path: Path) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "dicomnode", "models", *a], capture_output=True, text=True)  # noqa: E731
    r = run("check", str(bundles["onnx"]))
    assert r.returncode == 0 and "tiny-onnx 1.0.0: OK" in r.stdout, r.stderr
    r = run("show", str(bundles["state_dict"]))
    assert r.returncode == 0 and "nodule" in r.stdout and "27925004" in r.stdout
    r = run("list", "--dir", str(bundles["torchscript"].parent))
    assert r.returncode == 0 and "tiny-torchscript" in r.stdout
    (tmp_path / "manifest.json").write_text("{}")
    r = run("check", str(tmp_path))
    assert r.returncode == 1 and "missing 'name'" in r.stderr


def test_models_import_installs_validated_models_by_name(bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dicomnode models import`` validates a model folder and installs it under a name the node then finds."""
    from dicomnode.cli.main import main
    from dicomnode.jobs.models import IMPORT_RECORD, find_bundle
    from tests.helpers import write_config

    cfg = str(write_config(tmp_path))
    models_dir = tmp_path / "storage" / "models"
    assert main(["models", "import", str(bundles["state_dict"]), "--name", "tiny", "--config", cfg]) == 0
    assert "installed tiny (dicomnode)" in capsys.readouterr().out
    assert (models_dir / "tiny" / "manifest.json").is_file() and (models_dir / "tiny" / IMPORT_RECORD).is_file()
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".")], "no temporary folder is left behind"
    assert find_bundle("tiny", models_dir).name == "tiny-state_dict"

    assert main(["models", "list", "--config", cfg]) == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "installed" in listed and "chest-ct-lungs-nodules" in listed and "shipped" in listed
    assert main(["models", "show", "tiny", "--config", cfg]) == 0
    assert "27925004" in capsys.readouterr().out

    # A second import under the same name needs --replace, which swaps the folder whole.
    assert main(["models", "import", str(bundles["onnx"]), "--name", "tiny", "--config", cfg]) != 0
    assert "use --replace" in capsys.readouterr().err
    assert main(["models", "import", str(bundles["onnx"]), "--name", "tiny", "--replace", "--config", cfg]) == 0
    assert find_bundle("tiny", models_dir).name == "tiny-onnx"

    # What cannot be installed is refused, in words.
    nnunet = tmp_path / "nnunet"
    nnunet.mkdir()
    (nnunet / "dataset.json").write_text("{}")
    (nnunet / "plans.json").write_text("{}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    for source, name, said in (
        (nnunet, "nn", "does not validate as an nnU-Net v2 model: missing fold_*/checkpoint_final.pth"),
        (tmp_path / "storage", "x", "is not a model folder"),
        (broken, "b", "does not validate: bundle b"),
        (bundles["onnx"], "../escape", "use 1 to 64 letters"),
        (bundles["onnx"], "chest-ct-lungs-nodules", "is a shipped bundle's"),
    ):
        assert main(["models", "import", str(source), "--name", name, "--config", cfg]) != 0
        assert said in capsys.readouterr().err
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny"]
