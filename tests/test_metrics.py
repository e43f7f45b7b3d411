"""MetricsLogger: the jsonl file, truncation on resume, the loss curve PNG, and the wandb-missing error."""

from __future__ import annotations

import builtins
import json
import math

import pytest
import torch
from PIL import Image

from fastvideo.training import metrics
from fastvideo.training.metrics import MetricsLogger, format_postfix, plot_loss_curve, read_metrics, smooth


def log_steps(logger: MetricsLogger, steps) -> None:
    for step in steps:
        logger.log(
            step, loss=1.0 / step, lr=1e-4, grad_norm=torch.tensor(0.5), step_time=0.25, tokens_per_s=100
        )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_writes_one_json_line_per_step(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    log_steps(logger, [1, 2, 3])
    # Each line is on disk before close (flushed + fsynced).
    records = lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1] == {
        "step": 2,
        "loss": 0.5,
        "lr": 1e-4,
        "grad_norm": 0.5,
        "step_time": 0.25,
        "tokens_per_s": 100,
    }
    logger.log(4, loss=0.1)
    assert lines(tmp_path / "metrics.jsonl")[-1] == {
        "step": 4,
        "loss": 0.1,
        "lr": None,
        "grad_norm": None,
        "step_time": None,
    }
    logger.close()
    logger.close()  # idempotent


def test_disabled_rank_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "out", enabled=False)
    log_steps(logger, [1])
    logger.truncate_after(0)
    logger.close()
    assert not (tmp_path / "out").exists()


def test_fresh_run_replaces_an_old_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "loss": 1.0}\n')
    logger = MetricsLogger(tmp_path, enabled=True, resume=False)
    log_steps(logger, [1])
    logger.close()
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1]


def test_resume_truncates_to_match_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    logger = MetricsLogger(straight, enabled=True)
    log_steps(logger, range(1, 9))
    logger.close()

    # Interrupted after step 6 with the last checkpoint at step 4, and a torn last line.
    resumed = tmp_path / "resumed"
    logger = MetricsLogger(resumed, enabled=True)
    log_steps(logger, range(1, 7))
    logger._file.write('{"step": 7, "lo')
    logger._file.close()
    logger._file = None

    logger = MetricsLogger(resumed, enabled=True, resume=True)
    logger.truncate_after(4)
    assert [r["step"] for r in lines(resumed / "metrics.jsonl")] == [1, 2, 3, 4]
    log_steps(logger, range(5, 9))
    logger.close()
    assert (resumed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()


def test_close_writes_a_loss_curve_png(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    log_steps(logger, range(1, 41))
    logger.close()
    with Image.open(tmp_path / "loss_curve.png") as img:
        img.load()
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
        assert len(img.convert("L").getcolors(maxcolors=1 << 16)) > 2  # more than a blank canvas
    assert (tmp_path / "loss_curve.png").stat().st_size > 2000


@pytest.mark.parametrize("points", [[(s, math.exp(-s / 10)) for s in range(1, 30)], [(1, 0.5)], []])
def test_pil_plot_handles_any_length(tmp_path, points):
    path = plot_loss_curve(points, tmp_path / "curve.png", backend="pil")
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.size == (800, 450)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16)) > 2


def test_smooth_is_debiased():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([0.0, 10.0])[1] == pytest.approx(10 * 0.1 / (1 - 0.81))


def test_read_metrics_skips_torn_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1}\n{"step": 2\n')
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_wandb_missing_gives_install_hint(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fail_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fail_wandb)
    # Raised on every rank (not only the logging one), so no rank is left waiting in a collective.
    for enabled in (True, False):
        with pytest.raises(ImportError, match=r"pip install fastvideo\[wandb\]") as err:
            MetricsLogger(tmp_path, enabled=enabled, report_to="wandb", run_name="r", config={})
        assert isinstance(err.value, ValueError)  # fastvideo.train reports ValueErrors as plain errors


def test_wandb_gets_each_step(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    class FakeWandb:
        @staticmethod
        def init(**kwargs):
            calls.append(("init", kwargs))
            return FakeRun()

    monkeypatch.setattr(metrics, "import_wandb", lambda: FakeWandb)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = MetricsLogger(tmp_path, enabled=True, report_to="wandb", run_name="run", config={"lr": 1})
    log_steps(logger, [1])
    logger.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["name"] == "run" and init["config"] == {"lr": 1}
    assert calls[1] == (
        "log",
        1,
        {"loss": 1.0, "lr": 1e-4, "grad_norm": 0.5, "step_time": 0.25, "tokens_per_s": 100},
    )
    assert calls[-1] == ("finish",)
    # A resumed run continues the same wandb run.
    MetricsLogger(tmp_path, enabled=True, report_to="wandb", resume=True).close()
    assert calls[-2][1]["id"] == init["id"]


def test_format_postfix():
    text = format_postfix(
        loss=0.123456, lr=1e-5, grad_norm=torch.tensor(2.0), step_time=1.5, step=3, skipped=None
    )
    assert text == "loss=0.1235 lr=1.00e-05 grad_norm=2 step_time=1.5s step=3"
