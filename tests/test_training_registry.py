"""The training task registry: lookup, discovery, a third task through the generic loop; inference loads no training code."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import ai.training.task as task_module
from ai.errors import AIError
from ai.training import TrainConfig, get_task, register, task_names, train
from ai.training.task import Pair, TaskChoices


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the registry for the test, so that tasks it registers do not outlive it."""
    monkeypatch.setattr(task_module, "_TASKS", dict(task_module._TASKS))


def test_engine_imports_no_training_code() -> None:
    r = subprocess.run(
        [sys.executable, "-c", "import ai.engine, sys; print(any(m.startswith('ai.training') for m in sys.modules))"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_shipped_tasks_are_discovered() -> None:
    assert {"segmentation", "classification"} <= set(task_names())
    assert "classification" in TaskChoices() and "nope" not in TaskChoices()
    assert list(TaskChoices()) == task_names()
    cfg = TrainConfig(data="unused", out="unused")
    assert get_task("segmentation", cfg).metric == "dice"
    assert get_task("classification", cfg).metric == "auc"


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(AIError, match="unknown task 'nope'.*classification, segmentation"):
        get_task("nope", TrainConfig(data="unused", out="unused"))


def test_a_task_file_in_the_tasks_package_is_discovered(registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ai.training import tasks

    (tmp_path / "extra_task_for_test.py").write_text(
        "from ai.training.task import register\n\n\n"
        "@register\nclass ExtraTask:\n    name = 'extra'\n    metric = 'm'\n\n    def __init__(self, cfg):\n        self.cfg = cfg\n"
    )
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    try:
        assert "extra" in task_names()
        assert get_task("extra", TrainConfig(data="unused", out="unused")).metric == "m"
    finally:
        sys.modules.pop("ai.training.tasks.extra_task_for_test", None)


def test_a_name_registered_twice_is_refused(registry: None) -> None:
    with pytest.raises(AIError, match="registered twice"):

        @register
        class Impostor:
            name = "segmentation"
            metric = "dice"

            def __init__(self, cfg: TrainConfig) -> None:
                self.cfg = cfg


def test_a_third_task_runs_through_the_generic_loop(registry: None, tmp_path: Path) -> None:
    """A task the loop has never heard of: a 1x1x1 convolution regressing a scaled copy of its input."""

    @register
    class DoublingTask:
        name = "doubling"
        metric = "neg_mae"

        def __init__(self, cfg: TrainConfig) -> None:
            self.cfg = cfg

        def dataset(self, pairs: list[Pair]) -> TensorDataset:
            x = torch.randn(8, 1, 4, 4, 4)
            return TensorDataset(x, 2 * x)

        def network(self) -> torch.nn.Module:
            return torch.nn.Conv3d(1, 1, kernel_size=1)

        def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            return torch.nn.MSELoss()

        def split(self, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
            return pairs[1:], pairs[:1]

        def validate(self, model: torch.nn.Module, pairs: list[Pair], device: torch.device) -> dict[str, float]:
            model.eval()
            x = torch.ones(1, 1, 4, 4, 4, device=device)
            with torch.inference_mode():
                return {"neg_mae": -float((model(x) - 2 * x).abs().mean()), "pairs": float(len(pairs))}

        def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
            torch.save(state, out / "model.pt")
            (out / "manifest.json").write_text(json.dumps({"task": self.name}))

    data = tmp_path / "data"
    data.mkdir()
    for case in ("a", "b", "c"):  # the loop finds pairs on disk; this task never reads them
        (data / f"{case}_image.nii.gz").touch()
        (data / f"{case}_labels.nii.gz").touch()
    out = tmp_path / "bundle"
    cfg = TrainConfig(data=str(data), out=str(out), epochs=1, steps_per_epoch=2, batch_size=2, workers=0, task="doubling")
    result = train(cfg, progress=False)

    assert result["steps"] == 2
    [entry] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert entry["metric"] == "neg_mae" and set(entry["val"]) == {"neg_mae", "pairs"} and entry["val"]["pairs"] == 1.0
    assert entry["val"]["neg_mae"] <= 0 and entry["world"] == 1 and entry["amp"] is False
    assert {"train_seconds", "device", "seconds", "loss"} <= set(entry)
    assert json.loads((out / "manifest.json").read_text()) == {"task": "doubling"}
    state = torch.load(out / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"} and (out / "checkpoints" / "best.pt").exists()
