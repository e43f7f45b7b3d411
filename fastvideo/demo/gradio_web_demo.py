r"""Gradio web demo: type a prompt, get a video from one pipeline folder loaded once.

    python fastvideo/demo/gradio_web_demo.py                     # outputs/distill-mochi, else data/tiny-mochi
    python fastvideo/demo/gradio_web_demo.py --model_path data/mochi --default_steps 64 \
        --default_frames 85 --default_height 480 --default_width 848 --host 0.0.0.0 --port 7860
    python fastvideo/demo/gradio_web_demo.py --share             # also a public gradio.live link

then open http://127.0.0.1:7860. Without ``--model_path`` the demo serves the quickstart's distilled
model (``outputs/distill-mochi``, 8 PCM steps) when it exists, else the embedded tiny model
(``data/tiny-mochi``, built on first use; its DiT is random, so its videos are noise), and prints which.

The page takes a prompt, an optional negative prompt, a seed (or "randomise"), the guidance scale
(0: auto, i.e. 1.0 with the PCM scheduler, 4.5 with euler), frames, height, width, steps and the
scheduler, and shows a progress bar, then the video, the seed used and the time taken. The model is
loaded once, in one process (on the GPU when there is one), and is not thread-safe, so gradio's queue
runs one generation at a time and other users wait in line (their position is shown). Invalid values
(frames not 6k+1, sizes not multiples of 16, more steps than a PCM grid has, an empty prompt) come
back as a message in the page; nothing is generated and the server carries on. An image-to-video
folder (Wan 2.1 I2V) adds a first-frame image to the form, and needs it.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import gradio as gr

from fastvideo.cli import parse_config
from fastvideo.media.video import write_video
from fastvideo.models.tiny import build_tiny
from fastvideo.parallel.process_group import DistInfo, distributed
from fastvideo.sample.sampler import SCHEDULERS, Request, SampleConfig, Sampler, slug

MAX_SEED = 2**31 - 1
EXAMPLE_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "prompt.txt"


@dataclass
class DemoConfig:
    model_type: str = "mochi"
    model_path: str = ""
    """Pipeline folder (default: outputs/distill-<type> when it exists, else data/tiny-<type>, built on first use)."""
    host: str = "127.0.0.1"
    """Address to serve on (0.0.0.0: every interface)."""
    port: int = 7860
    share: bool = False
    """Also serve the page through a public gradio.live link."""
    output_path: str = "outputs/demo"
    """Folder the generated mp4s are written to."""
    max_queue: int = 32
    """Most requests waiting in line; more are turned away with a message."""
    default_frames: int = 25
    """Frames filled in at start (likewise height and width)."""
    default_height: int = 64
    default_width: int = 96
    default_steps: int | None = None
    """Steps filled in at start (default: 8 for a distilled PCM folder, else the family's: Mochi 64, Wan 50)."""
    fps: float | None = None
    """Frame rate of the written mp4s (default: the family's, Mochi 30, Wan 16)."""
    dtype: str = "auto"
    """bf16 | fp32 | auto (bf16 on GPU, fp32 on CPU)."""


class VideoMaker:
    """The Generate button: form values -> a checked ``Request`` -> an mp4 and a status line."""

    def __init__(self, sampler: Sampler, output_dir: Path, fps: float):
        self.sampler = sampler
        self.output_dir = output_dir
        self.fps = fps
        output_dir.mkdir(parents=True, exist_ok=True)

    def generate(
        self, prompt, negative_prompt, seed, randomise, guidance_scale, num_frames, height, width,
        num_inference_steps, scheduler_type, image=None,
        progress=gr.Progress(),  # noqa: B008 (gradio finds its progress tracker by this default)
    ):  # fmt: skip
        """Returns (video path, status); an invalid value gives (unchanged video, the message)."""
        try:
            request = form_request(
                prompt, negative_prompt, seed, randomise, guidance_scale, num_frames, height, width,
                num_inference_steps, scheduler_type, image,
            )  # fmt: skip
            kind, _, guidance = self.sampler.resolve(request)
        except ValueError as err:
            gr.Warning(str(err))
            return gr.update(), f"**Not generated:** {err}"
        start = time.perf_counter()
        path, denoise_s = self.make(request, progress)
        total_s = time.perf_counter() - start
        status = (
            f"Seed {request.seed} · {total_s:.1f} s ({denoise_s:.1f} s denoising) · {kind}, "
            f"{request.num_inference_steps} steps, guidance {guidance:g} · "
            f"{request.num_frames} frames at {request.height}x{request.width}"
        )
        print(f"[demo] {path}: {status}", flush=True)
        return str(path), status

    def make(self, request: Request, progress: gr.Progress) -> tuple[Path, float]:
        """Denoise, decode and write ``request``'s video; returns its path and the denoising seconds."""
        steps = request.num_inference_steps
        progress((0, steps), desc="denoising", unit="steps")
        start = time.perf_counter()
        latents = self.sampler.generate(
            request, on_step=lambda i: progress((i + 1, steps), desc="denoising", unit="steps")
        )
        denoise_s = time.perf_counter() - start
        progress(None, desc="decoding")
        name = f"{datetime.now():%Y%m%d-%H%M%S-%f}-{slug(request.prompt)}-seed{request.seed}.mp4"
        path = self.output_dir / name
        write_video(path, self.sampler.decode(latents), fps=self.fps)
        return path, denoise_s


def form_request(
    prompt, negative_prompt, seed, randomise, guidance_scale, num_frames, height, width,
    num_inference_steps, scheduler_type, image=None,
) -> Request:  # fmt: skip
    """The form's values as a ``Request``; ValueError names an empty field (the sampler checks the rest)."""
    if not (prompt or "").strip():
        raise ValueError("enter a prompt")
    sizes = {"frames": num_frames, "height": height, "width": width, "steps": num_inference_steps}
    empty = [name for name, value in sizes.items() if value is None]
    if empty:
        raise ValueError(f"enter a number for {', '.join(empty)}")
    if randomise or seed is None:
        seed = random.randint(0, MAX_SEED)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"the seed must be between 0 and {MAX_SEED}, got {seed}")
    return Request(
        prompt.strip(), seed=int(seed), negative_prompt=(negative_prompt or "").strip(),
        num_frames=int(num_frames), height=int(height), width=int(width),
        num_inference_steps=int(num_inference_steps),
        guidance_scale=float(guidance_scale) if guidance_scale else None, scheduler_type=scheduler_type,
        image=image or "",
    )  # fmt: skip


def build_demo(
    sampler: Sampler,
    defaults: Request,
    output_dir: str | Path = "outputs/demo",
    *,
    fps: float = 30.0,
    max_queue: int = 32,
    examples: Sequence[str] = (),
) -> gr.Blocks:
    """The page for ``sampler`` with ``defaults`` filled in, queued one generation at a time."""
    maker = VideoMaker(sampler, Path(output_dir), fps)
    rules = sampler.adapter.rules
    with gr.Blocks(title="fastvideo") as demo:
        kind = "image-to-video" if sampler.adapter.image_to_video else "text-to-video"
        gr.Markdown(f"# fastvideo {kind}\nModel: `{sampler.model_path}`")
        with gr.Row():
            with gr.Column():
                first_frame = (
                    [gr.Image(label="First frame", type="filepath", elem_id="first-frame")]
                    if sampler.adapter.image_to_video
                    else []
                )
                prompt = gr.Textbox(label="Prompt", placeholder="a red circle moving right")
                negative = gr.Textbox(label="Negative prompt (optional)")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=defaults.seed, precision=0)
                    randomise = gr.Checkbox(label="Randomise seed", value=True)
                    # gradio shows an empty Number as 0, so 0 stands for auto.
                    guidance = gr.Number(label="Guidance scale (0: auto)", value=defaults.guidance_scale or 0)
                with gr.Row():
                    k, m = rules.temporal_factor, rules.size_multiple
                    frames = gr.Number(label=f"Frames ({k}k+1)", value=defaults.num_frames, precision=0)
                    height = gr.Number(label=f"Height (multiple of {m})", value=defaults.height, precision=0)
                    width = gr.Number(label=f"Width (multiple of {m})", value=defaults.width, precision=0)
                with gr.Row():
                    steps = gr.Number(label="Steps", value=defaults.num_inference_steps, precision=0)
                    scheduler = gr.Dropdown(
                        list(SCHEDULERS), value=defaults.scheduler_type, label="Scheduler"
                    )
                button = gr.Button("Generate", variant="primary")
                if examples:
                    gr.Examples([[p] for p in examples], inputs=[prompt], label="Example prompts")
            with gr.Column():
                video = gr.Video(label="Video", elem_id="video", interactive=False)
                status = gr.Markdown(elem_id="status")
        inputs = [
            prompt,
            negative,
            seed,
            randomise,
            guidance,
            frames,
            height,
            width,
            steps,
            scheduler,
            *first_frame,
        ]
        for trigger in (button.click, prompt.submit):
            trigger(maker.generate, inputs, [video, status], concurrency_limit=1, concurrency_id="model")
    return demo.queue(default_concurrency_limit=1, max_size=max_queue)


def pick_model(cfg: DemoConfig) -> Path:
    """``--model_path``, else the quickstart's distilled model, else the tiny one (built if missing)."""
    if cfg.model_path:
        path, why = Path(cfg.model_path), "--model_path"
    elif (Path(f"outputs/distill-{cfg.model_type}") / "model_index.json").is_file():
        path, why = Path(f"outputs/distill-{cfg.model_type}"), "the quickstart's distilled model"
    else:
        path = Path(f"data/tiny-{cfg.model_type}")
        why = "the embedded tiny model; its DiT is random, so its videos are noise"
        if not (path / "model_index.json").is_file():
            print(f"[demo] building the tiny model in {path}")
        build_tiny(cfg.model_type, path)
    print(f"[demo] model: {path} ({why})", flush=True)
    return path


def default_request(cfg: DemoConfig, sampler: Sampler) -> Request:
    steps = cfg.default_steps or (
        8 if sampler.folder_pcm is not None else sampler.adapter.sampling.num_inference_steps
    )
    return Request(prompt="", num_frames=cfg.default_frames, height=cfg.default_height, width=cfg.default_width,
                   num_inference_steps=steps)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(DemoConfig, argv, description=__doc__)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with distributed() as dist_info:  # one process: cuda:0 when there is a GPU, else the CPU
        if dist_info.world_size > 1:
            print("error: the demo is one process; run it with python, not torchrun", file=sys.stderr)
            return 2
        try:
            serve(cfg, dist_info)
        except (ValueError, OSError) as err:  # a bad flag or model folder, a port in use
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


def serve(cfg: DemoConfig, dist_info: DistInfo) -> None:
    """Load the model, build the page and serve it until interrupted."""
    sample_cfg = SampleConfig(model_type=cfg.model_type, model_path=str(pick_model(cfg)), dtype=cfg.dtype)
    sampler = Sampler(sample_cfg, dist_info)
    examples = EXAMPLE_PROMPTS.read_text().splitlines() if EXAMPLE_PROMPTS.is_file() else []
    fps = cfg.fps or sampler.adapter.sampling.fps
    demo = build_demo(sampler, default_request(cfg, sampler), cfg.output_path, fps=fps,
                      max_queue=cfg.max_queue, examples=[p for p in examples if p.strip()])  # fmt: skip
    demo.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share,
                allowed_paths=[str(Path(cfg.output_path).resolve())])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
