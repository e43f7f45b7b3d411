"""Fine-tuning step time against a bare loop of the same model, and activation memory per checkpointing setting.

    python benchmarks/bench_train.py [--data data/processed --steps 30 --model_path data/tiny-mochi]

Needs preprocessed data (``bash scripts/finetune_data_gen.sh``). In one process, on the same
diffusers model, batches and optimizer settings, it alternates blocks of steps between
fastvideo's ``Trainer.train_step`` (data loading prefetched in a thread, seeded noise, clipping, scheduler,
metrics line) and a bare loop (forward, MSE, backward, AdamW, nothing else; batches preloaded) and
reports the median step time of each and the framework overhead. Then it measures the bytes
autograd saves for backward with 0, 1, ..., all blocks checkpointed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def wider_model(tiny: Path, out: Path) -> Path:
    """The tiny model's DiT at 8 heads x 64 and 4 blocks (random weights): more compute per step."""
    from diffusers import MochiTransformer3DModel

    config = MochiTransformer3DModel.load_config(tiny / "transformer")
    config.update(num_attention_heads=8, attention_head_dim=64, num_layers=4, pooled_projection_dim=256)
    torch.manual_seed(0)
    MochiTransformer3DModel.from_config(config).save_pretrained(out / "transformer")
    return out


def make_trainer(args, out: str):
    from fastvideo.parallel.process_group import DistInfo
    from fastvideo.training.config import TrainConfig
    from fastvideo.training.trainer import Trainer

    cfg = TrainConfig(output_dir=out, model_path=str(args.model_path), data_json_path=args.data,
                      max_train_steps=10**6, learning_rate=1e-5, cfg=0.1)  # fmt: skip
    trainer = Trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    trainer.setup()
    return trainer


def bare_loop(trainer, batches):
    """The same model and update with nothing around it."""
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel.from_pretrained(Path(trainer.cfg.model_path) / "transformer").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    state = {"i": 0}

    def step():
        latents, embeds, mask = batches[state["i"] % len(batches)]
        state["i"] += 1
        noise = torch.randn(latents.shape, generator=gen)
        sigmas = torch.rand(latents.shape[0], generator=gen)
        s = sigmas.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        out = model(hidden_states=noisy, encoder_hidden_states=embeds, timestep=(1 - sigmas) * 1000,
                    encoder_attention_mask=mask, return_dict=False)[0]  # fmt: skip
        loss = F.mse_loss(-out, noise - latents)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def activation_bytes(args) -> list[tuple[str, int]]:
    from diffusers import MochiTransformer3DModel

    from fastvideo.dataset.latent_dataset import LatentDataset
    from fastvideo.parallel.activation_checkpointing import SelectiveCheckpointing, saved_tensor_bytes

    item = LatentDataset(args.data)[0]
    rows = []
    depth = MochiTransformer3DModel.load_config(Path(args.model_path) / "transformer")["num_layers"]
    for count in range(depth + 1):
        model = MochiTransformer3DModel.from_pretrained(Path(args.model_path) / "transformer")
        if count:
            SelectiveCheckpointing(num_blocks=count).apply(model)
        cond = item["cond"]
        inputs = dict(hidden_states=item["latents"][None], encoder_hidden_states=cond["prompt_embeds"][None],
                      timestep=torch.tensor([500.0]), encoder_attention_mask=cond["prompt_attention_mask"][None])  # fmt: skip
        rows.append(
            (
                f"{count} of {depth}",
                saved_tensor_bytes(lambda m=model, x=inputs: m(**x, return_dict=False)[0]),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--model_path", default="data/tiny-mochi")
    parser.add_argument("--steps", type=int, default=30, help="steps per method, in blocks of 5, alternating")
    parser.add_argument("--wider", action="store_true", help="also time an 8x64-head, 4-block DiT")
    args = parser.parse_args()
    compare_step_times(args, "tiny Mochi DiT (4 heads x 16, 2 blocks)")
    if args.wider:
        with tempfile.TemporaryDirectory() as folder:
            wide = argparse.Namespace(
                **{**vars(args), "model_path": wider_model(Path(args.model_path), Path(folder))}
            )
            compare_step_times(wide, "wider Mochi DiT (8 heads x 64, 4 blocks)")
    print("\n# activation bytes saved for backward (one sample), by blocks checkpointed (tiny DiT)")
    rows = activation_bytes(args)
    for name, nbytes in rows:
        print(f"{name:>8} blocks  {nbytes:>12,d} bytes  {nbytes / rows[0][1]:6.1%} of none")


def compare_step_times(args, label: str) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(args, out)
        from fastvideo.dataset.latent_dataset import collate

        batches = []
        for indices in trainer.sampler.epoch_batches(0)[:8]:
            b = collate([trainer.dataset[i] for i in indices])
            batches.append((b["latents"], b["cond"]["prompt_embeds"], b["cond"]["prompt_attention_mask"]))
        bare = bare_loop(trainer, batches)
        ours = trainer.train_step
        timed(ours, 3), timed(bare, 3)  # warm-up
        t_ours, t_bare = [], []
        for _ in range(args.steps // 5):
            t_ours += timed(ours, 5)
            t_bare += timed(bare, 5)
        trainer.cleanup()
    shape = tuple(batches[0][0].shape)
    m_ours, m_bare = statistics.median(t_ours), statistics.median(t_bare)
    print(
        f"\n# fine-tuning step time, {label}, latents {shape}, {len(t_ours)} steps each, alternating blocks of 5"
    )
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {datetime.date.today()}"
    )
    print(f"bare loop (forward, backward, AdamW)  median {m_bare * 1e3:8.2f} ms/step")
    print(f"fastvideo Trainer.train_step           median {m_ours * 1e3:8.2f} ms/step")
    print(f"framework overhead: {100 * (m_ours / m_bare - 1):+.1f}% (ratio {m_ours / m_bare:.3f})")


if __name__ == "__main__":
    main()
