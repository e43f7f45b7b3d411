"""Full-size Mochi 1 on one GPU with random weights: LoRA and full fine-tuning steps, and sampling latency.

    python benchmarks/gpu/bench_mochi.py --out results.jsonl            # on a CUDA machine
    python benchmarks/gpu/bench_mochi.py --smoke --out /tmp/smoke.jsonl # CPU, toy sizes: checks the script

No download: the DiT is diffusers' ``MochiTransformer3DModel`` with mochi-1-preview's config (48
blocks, 24 heads x 128), built on the meta device by fastvideo's ``Trainer`` and materialised on
the GPU with random weights (``RandomWeightsTrainer.load_weights``). The data are random latents of
the real shape (12 channels, (frames - 1) / 6 + 1 latent frames, 60 x 106 for 480 x 848) and
T5-sized text embeddings (256 x 4096, every token valid: the longest prompt), written in the
preprocessed-folder layout that ``fastvideo.train`` reads. Sections, each printed and appended to
``--out`` (JSON lines) as soon as it is measured:

* ``matmul``: the device's bf16 rate on an 8192^3 product (the denominator of MFU).
* ``lora``: ``Trainer.train_step`` with LoRA rank 16 on q/k/v/out of both streams (the layers and
  rank of genmo's LoRA trainer), bf16 base, batch 1, per frame count, with activation
  checkpointing ``auto`` (budget ``--ac_budget_gb``) and ``all``: median s/step after warm-up and
  peak ``torch.cuda.max_memory_allocated``. ``lora37`` runs the first frame count alone, early in
  the default order (matmul, lora37, sample, full, lora), so a run cut short still has it;
  ``--profile_dir`` adds a torch.profiler table of one step at ``--profile_frames``.
* ``full``: a full fine-tune of a ``--full_layers``-block Mochi (fp32 master weights, bf16
  autocast, AdamW): s/step, peak memory and MFU = model FLOPs per step (3 x one forward, counted by
  ``torch.utils.flop_counter``; recomputation not counted) / step time / the measured matmul rate.
* ``sample``: fastvideo's ``euler_denoise`` on the bf16 DiT: 64 Euler steps on Mochi's schedule at
  guidance 4.5 (two forwards a step) against 8 steps of the default ``pcm_linear_quadratic`` grid
  at guidance 1; denoising only (the VAE decode is not timed).
* ``compile`` (not in the default sections): the LoRA step (all blocks checkpointed) and the full
  fine-tune, each eager and with ``--compile`` (torch.compile per block), side by side.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import MochiTransformer3DModel

from fastvideo.dataset.layout import INDEX_FILE, LATENTS, condition_fields, item_file, record_for
from fastvideo.models.mochi import MochiAdapter
from fastvideo.parallel.process_group import distributed
from fastvideo.sample.denoise import euler_denoise
from fastvideo.schedulers import PCMFlowScheduler
from fastvideo.training.config import TrainConfig
from fastvideo.training.trainer import Trainer

# Toy shapes for --smoke: the same code paths on a CPU in about a minute.
SMOKE_DIT = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 32, "pooled_projection_dim": 64,
             "text_embed_dim": 64, "time_embed_dim": 32}  # fmt: skip


class RandomWeightsTrainer(Trainer):
    """fastvideo's Trainer with random weights instead of the folder's (there is no checkpoint to read)."""

    def load_weights(self, model: torch.nn.Module) -> None:
        randomize_(model, self.cfg.seed)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights N(0, 0.02), LoRA A like nn.Linear, LoRA B and biases zero, norm scales one (drawn on their device)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, p in model.named_parameters():
        if name.endswith("bias") or ".lora_B." in name:
            p.zero_()
        elif p.ndim == 1:
            p.fill_(1.0)
        else:
            if p.device not in generators:
                generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
            std = p.shape[1] ** -0.5 if ".lora_A." in name else 0.02
            p.normal_(0.0, std, generator=generators[p.device])


def dit_config(overrides: dict) -> dict:
    with torch.device("meta"):
        model = MochiTransformer3DModel(**overrides)
    return {
        "_class_name": "MochiTransformer3DModel",
        **{k: v for k, v in model.config.items() if k[0] != "_"},
    }


def write_model_folder(root: Path, config: dict) -> Path:
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text(json.dumps(config))
    return root


def write_dataset(root: Path, shape: tuple[int, ...], text: tuple[int, int], items: int = 2) -> Path:
    """A preprocessed folder of random latents [C, T, h, w] and embeddings [L, D] (all tokens valid)."""
    g = torch.Generator().manual_seed(0)
    fields = [LATENTS, *condition_fields(MochiAdapter.text_condition_keys)]
    records = []
    for i in range(items):
        name = f"item{i}"
        tensors = {
            "latents": torch.randn(shape, generator=g),
            "prompt_embeds": torch.randn(text, generator=g) * 0.2,
            "prompt_attention_mask": torch.ones(text[0], dtype=torch.bool),
        }
        for field in fields:
            item_file(root, field, name).parent.mkdir(parents=True, exist_ok=True)
            torch.save(tensors[field.name], item_file(root, field, name))
        records.append({**record_for(name, fields), "caption": f"random {i}", "kind": "video",
                        "length": shape[1], "height": shape[2], "width": shape[3]})  # fmt: skip
    (root / INDEX_FILE).write_text(json.dumps(records))
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_tflops(device: torch.device, n: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    started, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


class Bench:
    def __init__(self, args, info, tmp: Path):
        self.args, self.info, self.tmp = args, info, tmp
        self.device = info.device
        self.config = dit_config(SMOKE_DIT if args.smoke else {})
        self.model_dirs = {
            "all": write_model_folder(tmp / "model-all", self.config),
            "full": write_model_folder(tmp / "model-full", {**self.config, "num_layers": args.full_layers}),
        }
        self.text = (256, self.config["text_embed_dim"])
        self.out = Path(args.out)
        self.forward_flops_of: dict[int, float] = {}

    def record(self, **row) -> None:
        row = {"device": self.device_name(), "date": str(datetime.date.today()), **row}
        print(json.dumps(row), flush=True)
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"{platform.processor() or platform.machine()} CPU"

    def latent_shape(self, frames: int) -> tuple[int, ...]:
        return MochiAdapter.rules.latent_shape(
            frames, self.args.height, self.args.width, MochiAdapter.latent_channels
        )

    def dataset(self, frames: int) -> Path:
        root = self.tmp / f"data-{frames}"
        if not root.exists():
            write_dataset(root, self.latent_shape(frames), self.text)
        return root

    def trainer(self, frames: int, model: str, out: str, **flags) -> RandomWeightsTrainer:
        cfg = TrainConfig(model_path=str(self.model_dirs[model]), data_json_path=str(self.dataset(frames)),
                          output_dir=str(self.tmp / out), max_train_steps=1000, learning_rate=1e-5, **flags)  # fmt: skip
        trainer = RandomWeightsTrainer(cfg, self.info)
        trainer.setup()
        return trainer

    def time_steps(self, trainer: Trainer) -> tuple[float, list[float]]:
        times = []
        for _ in range(self.args.warmup + self.args.steps):
            sync(self.device)
            started = time.perf_counter()
            trainer.train_step()
            sync(self.device)
            times.append(time.perf_counter() - started)
        return statistics.median(times[self.args.warmup :]), times

    def lora(self, frames: int, checkpointing: str, compile: bool = False) -> None:
        reset_memory(self.device)
        row = {"section": "lora", "frames": frames, "checkpointing": checkpointing, "compile": compile}
        try:
            trainer = self.trainer(frames, "all", f"lora-{frames}-{checkpointing}-{compile}", use_lora=True,
                                   lora_rank=16, lora_alpha=16, activation_checkpointing=checkpointing,
                                   ac_budget_gb=self.args.ac_budget_gb, compile=compile)  # fmt: skip
        except ValueError as err:  # the trainer's refusal, e.g. a budget no checkpointing choice fits
            self.record(**row, ac_budget_gb=self.args.ac_budget_gb, error=str(err))
            return
        try:
            median, times = self.time_steps(trainer)
            if self.args.profile_dir and checkpointing == "all" and frames == self.args.profile_frames:
                name = f"profile_lora_{frames}{'_compiled' if compile else ''}.txt"
                self.profile(trainer, Path(self.args.profile_dir) / name)
        except torch.OutOfMemoryError:
            self.record(**row, checkpointed_blocks=len(trainer.ac_blocks), error="out of memory")
            return
        finally:
            trainer.cleanup()
        self.record(**row, ac_budget_gb=self.args.ac_budget_gb, checkpointed_blocks=len(trainer.ac_blocks),
                    s_per_step=round(median, 3), peak_gb=peak_gb(self.device),
                    step_times=[round(t, 3) for t in times])  # fmt: skip

    def profile(self, trainer: Trainer, out: Path) -> None:
        """One more step under torch.profiler: the kernels that take the time, written to ``out``."""
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        with profile(activities=activities) as prof:
            trainer.train_step()
            sync(self.device)
        sort = "self_device_time_total" if cuda else "self_cpu_time_total"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))
        print(f"profile: {out}", flush=True)

    def full(self, frames: int, flops_per_s: float, compile: bool = False) -> None:
        reset_memory(self.device)
        trainer = self.trainer(frames, "full", f"full-{frames}-{compile}", activation_checkpointing="auto",
                               ac_budget_gb=self.args.ac_budget_gb, compile=compile)  # fmt: skip
        try:
            # Counted on the eager model (a compiled one runs the same FLOPs); reused for the compiled run.
            if not compile or frames not in self.forward_flops_of:
                self.forward_flops_of[frames] = self.forward_flops(trainer)
            median, times = self.time_steps(trainer)
            model_flops = 3 * self.forward_flops_of[frames]
            self.record(section="full", frames=frames, layers=self.args.full_layers, compile=compile,
                        parameters=sum(p.numel() for p in trainer.model.parameters()),
                        checkpointed_blocks=len(trainer.ac_blocks), s_per_step=round(median, 3),
                        peak_gb=peak_gb(self.device), model_tflop_per_step=round(model_flops / 1e12, 2),
                        achieved_tflops=round(model_flops / median / 1e12, 1),
                        mfu=round(model_flops / median / flops_per_s, 3),
                        step_times=[round(t, 3) for t in times])  # fmt: skip
        finally:
            trainer.cleanup()

    @torch.no_grad()
    def forward_flops(self, trainer: Trainer) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        item = trainer.dataset[0]
        latents = item["latents"][None].to(self.device)
        cond = {k: v[None].to(self.device) for k, v in item["cond"].items()}
        sigmas = torch.full((1,), 0.5, device=self.device)
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast(self.device.type, dtype=trainer.compute_dtype(),
                                     enabled=trainer.compute_dtype() != torch.float32):  # fmt: skip
            trainer.adapter.predict_velocity(trainer.model, latents, sigmas, cond)
        return float(counter.get_total_flops())

    @torch.no_grad()
    def sample(self, frames: int) -> None:
        reset_memory(self.device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        with torch.device("meta"):
            model = MochiTransformer3DModel.from_config(self.config)
        model = model.to_empty(device=self.device).to(dtype).eval().requires_grad_(False)
        randomize_(model, 0)
        adapter = MochiAdapter(self.model_dirs["all"], device=self.device)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn((1, *self.latent_shape(frames)), generator=g).to(self.device)
        embeds = (torch.randn((1, *self.text), generator=g) * 0.2).to(self.device, dtype)
        mask = torch.ones(1, self.text[0], dtype=torch.bool, device=self.device)
        cond = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        pcm = PCMFlowScheduler()
        pcm.set_timesteps(8)
        runs = {"euler-64-guided": (adapter.default_sigmas(64), 4.5), "pcm-8": (pcm.sigmas, 1.0)}
        euler_denoise(adapter, model, noise, runs["pcm-8"][0][:2], cond, model_dtype=dtype)  # warm-up
        seconds = {}
        for name, (sigmas, guidance) in [*runs.items(), ("pcm-8 (again)", runs["pcm-8"])]:
            sync(self.device)
            started = time.perf_counter()
            euler_denoise(adapter, model, noise, sigmas, cond, guidance=guidance, model_dtype=dtype)
            sync(self.device)
            seconds[name] = round(time.perf_counter() - started, 3)
        fastest_pcm = min(seconds["pcm-8"], seconds["pcm-8 (again)"])
        self.record(section="sample", frames=frames, height=self.args.height, width=self.args.width,
                    seconds=seconds, euler64_over_pcm8=round(seconds["euler-64-guided"] / fastest_pcm, 2),
                    peak_gb=peak_gb(self.device))  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu_results.jsonl")
    parser.add_argument("--sections", default="matmul,lora37,sample,full,lora")
    parser.add_argument("--frames", default="37,61,79,85", help="frame counts of the lora section")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=848)
    parser.add_argument("--full_layers", type=int, default=12)
    parser.add_argument("--ac_budget_gb", type=float, default=16.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--profile_dir", default="", help="write a profile of one LoRA step (checkpointing all) here"
    )
    parser.add_argument("--profile_frames", type=int, default=37)
    parser.add_argument("--smoke", action="store_true", help="toy DiT and 64x96 frames, for a CPU check")
    args = parser.parse_args(argv)
    if args.smoke:
        args.height, args.width, args.frames, args.full_layers = 64, 96, "7,13", 2
        args.ac_budget_gb, args.warmup, args.steps, args.profile_frames = 0.001, 1, 1, 7
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    frames = [int(f) for f in args.frames.split(",")]
    sections = args.sections.split(",")
    with distributed() as info, tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, info, Path(tmp))
        rate = matmul_tflops(info.device, 8192 if info.device.type == "cuda" else 512) * 1e12
        if "matmul" in sections:
            bench.record(section="matmul", bf16_tflops=round(rate / 1e12, 1))
        if "lora37" in sections:
            for checkpointing in ("auto", "all"):
                bench.lora(frames[0], checkpointing)
        if "sample" in sections:
            bench.sample(frames[0])
        if "full" in sections:
            bench.full(frames[0], rate)
        if "lora" in sections:
            for f in frames[1:] if "lora37" in sections else frames:
                for checkpointing in ("auto", "all"):
                    bench.lora(f, checkpointing)
        if "compile" in sections:  # eager and compiled side by side
            for compiled in (False, True):
                bench.lora(frames[0], "all", compile=compiled)
            for compiled in (False, True):
                bench.full(frames[0], rate, compile=compiled)


if __name__ == "__main__":
    main()
