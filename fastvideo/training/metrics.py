"""Training metrics: one JSON line per step in OUTPUT_DIR/metrics.jsonl, optional wandb, a loss curve.

    logger = MetricsLogger(output_dir, enabled=dist.is_main, report_to="none", run_name="run",
                           config=vars(cfg), resume=resumed)
    if resumed:
        logger.truncate_after(step)       # forget steps logged after the checkpoint we resumed from
    logger.log(step, loss=0.12, lr=1e-5, grad_norm=0.8, step_time=1.4)
    bar.set_postfix_str(format_postfix(loss=0.12, lr=1e-5))
    logger.close()                        # writes OUTPUT_DIR/loss_curve.png, finishes wandb

Each line is flushed and fsynced as it is written, so a killed run keeps every finished step; after
``truncate_after`` a resumed run's file reads as if it had never stopped. Only the rank with
``enabled=True`` (rank 0) writes anything. ``report_to="wandb"`` imports wandb lazily (install it
with ``pip install fastvideo[wandb]``) and runs offline when WANDB_API_KEY is unset (WANDB_MODE
overrides). The loss curve uses matplotlib when it is installed and a small Pillow plot otherwise.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from fastvideo.io import atomic_path, atomic_write_text

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
WANDB_ID_FILE = "wandb_run_id.txt"
STANDARD_FIELDS = ("loss", "lr", "grad_norm", "step_time")


class MissingDependencyError(ImportError, ValueError):
    """An optional package a setting needs is not installed (a ValueError too: a bad setting)."""


def plain(value: Any) -> Any:
    """A JSON-friendly scalar: 0-d tensors and numpy numbers become Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise MissingDependencyError(
            "--report_to wandb needs the wandb package: pip install fastvideo[wandb]"
        ) from None
    return wandb


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool,
        report_to: str = "none",
        run_name: str | None = None,
        config: dict | None = None,
        resume: bool = False,
    ):
        if report_to not in ("none", "wandb"):
            raise ValueError(f"report_to must be none or wandb (got {report_to!r})")
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS_FILE
        self.enabled = enabled
        self.wandb_run = None
        self._file = None
        if report_to == "wandb":
            # Checked on every rank, so all fail together instead of rank 0 alone (a hang).
            wandb = import_wandb()
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            # A fresh run: an old file in the same OUTPUT_DIR is not part of this run.
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if report_to == "wandb":
            self.wandb_run = start_wandb(wandb, self.output_dir, run_name, config, resume)

    def truncate_after(self, step: int) -> None:
        """Drop lines with step > ``step`` (logged after the checkpoint a resumed run starts from)."""
        if not self.enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self._file.close()
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, **scalars: Any) -> None:
        """Append {step, loss, lr, grad_norm, step_time, **others} (missing standard fields: null)."""
        if not self.enabled:
            return
        values = {k: plain(v) for k, v in scalars.items()}
        record = {"step": int(step), **{k: values.pop(k, None) for k in STANDARD_FIELDS}, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)

    def log_measures(self, step: int, passes: dict[str, dict]) -> None:
        """Report validation's collapse measures (``collapse.measure``) per pass: printed, and to wandb; each
        pass's folder holds them per prompt in measures.json."""
        if not self.enabled or not passes:
            return
        for name, measures in passes.items():
            diversity = measures["diversity"]  # NaN with one seed per prompt
            across = f"diversity across seeds {diversity:.4g}, " if math.isfinite(diversity) else ""
            print(f"validation at step {step}, {name}: {across}motion {measures['motion']:.4g}")
        if self.wandb_run is not None:
            values = {f"{name}/{k}": passes[name][k] for name in passes for k in ("diversity", "motion")}
            self.wandb_run.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)

    def log_videos(self, step: int, folder: str | Path) -> None:
        """Report the validation videos of ``step`` (all ranks have written theirs by now)."""
        if not self.enabled:
            return
        videos = sorted(Path(folder).glob("*.mp4"))
        print(f"validation at step {step}: {len(videos)} videos in {folder}")
        if self.wandb_run is not None and videos:
            import wandb

            captions = [v.with_suffix(".txt").read_text(encoding="utf-8").strip() for v in videos]
            clips = [
                wandb.Video(str(v), caption=c, format="mp4") for v, c in zip(videos, captions, strict=True)
            ]
            self.wandb_run.log({"validation": clips}, step=step)

    def close(self) -> None:
        """Write loss_curve.png from the whole metrics.jsonl and finish wandb; safe to call twice."""
        if not self.enabled or self._file is None:
            return
        self._file.close()
        self._file = None
        points = [(r["step"], r["loss"]) for r in read_metrics(self.path) if _finite(r.get("loss"))]
        plot_loss_curve(points, self.output_dir / CURVE_FILE)
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def start_wandb(wandb, output_dir: Path, run_name: str | None, config: dict | None, resume: bool):
    # Keep one run id per OUTPUT_DIR, so a resumed training continues the same wandb run.
    id_file = output_dir / WANDB_ID_FILE
    if resume and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        atomic_write_text(run_id + "\n", id_file)
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "fastvideo"),
        name=run_name,
        id=run_id,
        resume="allow",
        config=config,
        dir=str(output_dir),
        mode=mode,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def format_postfix(**scalars: Any) -> str:
    """A short ``key=value`` string for a tqdm bar: ``loss=0.1234 lr=1.00e-05 step_time=1.40s``."""
    parts = []
    for key, value in scalars.items():
        value = plain(value)
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.2e}" if value != 0 and not 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"
            if key.endswith("_time"):
                text += "s"
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


# --- the loss curve ------------------------------------------------------------------------------
def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential smoothing (TensorBoard's), so the first points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_loss_curve(points: list[tuple[int, float]], path: str | Path, backend: str = "auto") -> Path:
    """Write a PNG of loss vs step with a smoothed line; ``backend``: auto, matplotlib or pil."""
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"backend must be auto, matplotlib or pil (got {backend!r})")
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401

            backend = "matplotlib"
        except ImportError:
            backend = "pil"
    steps = [s for s, _ in points]
    losses = [v for _, v in points]
    with atomic_path(path) as tmp:
        draw = _plot_matplotlib if backend == "matplotlib" else _plot_pil
        draw(steps, losses, smooth(losses), tmp)
    return Path(path)


def _plot_matplotlib(steps, losses, smoothed, out: Path) -> None:
    # The object API, not pyplot: no global backend or figure state in the training process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="#9ecae1", linewidth=1, label="loss")
    ax.plot(steps, smoothed, color="#08519c", linewidth=2, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if not steps:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png")


WIDTH, HEIGHT = 800, 450
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 30, 50


def _plot_pil(steps, losses, smoothed, out: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    box = (LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM)
    draw.rectangle(box, outline="black")
    draw.text((WIDTH // 2 - 40, 8), "loss vs step", fill="black")
    draw.text((WIDTH // 2 - 10, HEIGHT - 20), "step", fill="black")
    if not steps:
        draw.text((WIDTH // 2 - 45, HEIGHT // 2), "no loss logged", fill="black")
        img.save(out, format="PNG")
        return
    x_range = _padded_range(min(steps), max(steps))
    y_range = _padded_range(min(losses), max(losses))
    to_px = _mapper(box, x_range, y_range)
    _draw_ticks(draw, box, x_range, y_range, to_px)
    for values, color, width in ((losses, (158, 202, 225), 1), (smoothed, (8, 81, 156), 2)):
        xy = [to_px(s, v) for s, v in zip(steps, values, strict=True)]
        if len(xy) == 1:
            x, y = xy[0]
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        else:
            draw.line(xy, fill=color, width=width)
    draw.line((WIDTH - 170, TOP + 15, WIDTH - 150, TOP + 15), fill=(158, 202, 225), width=2)
    draw.text((WIDTH - 145, TOP + 9), "loss", fill="black")
    draw.line((WIDTH - 170, TOP + 32, WIDTH - 150, TOP + 32), fill=(8, 81, 156), width=2)
    draw.text((WIDTH - 145, TOP + 26), "smoothed", fill="black")
    img.save(out, format="PNG")


def _padded_range(lo: float, hi: float) -> tuple[float, float]:
    # A flat series still needs a non-empty axis.
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def _mapper(box, x_range, y_range):
    x0, y0, x1, y1 = box

    def to_px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_range[0]) / (x_range[1] - x_range[0])
        fy = (y - y_range[0]) / (y_range[1] - y_range[0])
        return x0 + 5 + fx * (x1 - x0 - 10), y1 - 5 - fy * (y1 - y0 - 10)

    return to_px


def _draw_ticks(draw, box, x_range, y_range, to_px, n: int = 5) -> None:
    x0, y0, x1, y1 = box
    for i in range(n):
        x = x_range[0] + (x_range[1] - x_range[0]) * i / (n - 1)
        px, _ = to_px(x, y_range[0])
        draw.line((px, y1, px, y1 + 5), fill="black")
        draw.text((px - 12, y1 + 8), f"{x:.0f}", fill="black")
        y = y_range[0] + (y_range[1] - y_range[0]) * i / (n - 1)
        _, py = to_px(x_range[0], y)
        draw.line((x0 - 5, py, x0, py), fill="black")
        draw.text((x0 - 70, py - 6), f"{y:.3g}", fill="black")
