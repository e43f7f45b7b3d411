"""Preprocessing end to end on the tiny model: formats, shapes, bad input, resume, and 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastvideo.data_preprocess.preprocess import main as preprocess_main
from fastvideo.data_preprocess.synthetic import add_bad_items, make_synthetic_dataset
from fastvideo.media.video import FrameSpec, load_media
from fastvideo.models.mochi import MochiAdapter

FRAMES, HEIGHT, WIDTH = 13, 32, 48
LATENT_VIDEO = (12, 3, 4, 6)
LATENT_IMAGE = (12, 1, 4, 6)


def run(tiny_mochi, out, *extra) -> int:
    args = ["--model_path", str(tiny_mochi), "--output_dir", str(out), "--num_frames", str(FRAMES),
            "--height", str(HEIGHT), "--width", str(WIDTH), *map(str, extra)]  # fmt: skip
    return preprocess_main(args)


def index(out) -> list[dict]:
    return json.loads((out / "videos2caption.json").read_text())


def report(out) -> dict:
    return json.loads((out / "preprocess_report.json").read_text())


def latents_of(out) -> dict[str, torch.Tensor]:
    return {p.name: torch.load(p) for p in sorted((out / "latent").glob("*.pt"))}


def source_args(synthetic, fmt: str) -> list[str]:
    return {
        "mochi": ["--data_dir", synthetic.mochi_dir],
        "cogvideox": ["--data_dir", synthetic.cogvideox_dir],
        "csv": ["--data_merge_path", synthetic.csv_path],
        "jsonl": ["--data_merge_path", synthetic.jsonl_path],
        "merge": ["--data_merge_path", synthetic.merge_path],
    }[fmt]


@pytest.mark.parametrize("fmt", ["mochi", "cogvideox", "csv", "jsonl", "merge"])
def test_every_input_format_gives_latents_of_the_right_shape(tiny_mochi, synthetic, tmp_path, fmt):
    out = tmp_path / fmt
    assert run(tiny_mochi, out, *source_args(synthetic, fmt)) == 0
    records = index(out)
    # Same captions as the generator wrote, whichever format they came through.
    assert sorted(r["caption"] for r in records) == sorted(synthetic.captions.values())
    for rec in records:
        latent = torch.load(out / "latent" / rec["latent_path"])
        embed = torch.load(out / "prompt_embed" / rec["prompt_embed_path"])
        mask = torch.load(out / "prompt_attention_mask" / rec["prompt_attention_mask"])
        expected = LATENT_IMAGE if rec["kind"] == "image" else LATENT_VIDEO
        assert tuple(latent.shape) == expected and latent.dtype == torch.float32
        assert rec["length"] == expected[1]
        assert embed.shape == (256, 32) and mask.shape == (256,) and mask.dtype == torch.bool
        assert 1 < mask.sum() < 256
    assert report(out)["skipped"] == []


def test_latents_and_embeddings_equal_the_adapter_on_the_same_frames(tiny_mochi, synthetic, tmp_path):
    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir, "--embed_dtype", "float32") == 0
    rec = next(r for r in index(out) if r["kind"] == "video")
    adapter = MochiAdapter(tiny_mochi)
    clip = load_media(
        rec["media_path"], FrameSpec(num_frames=FRAMES, height=HEIGHT, width=WIDTH, train_fps=30)
    )
    expected = adapter.encode_video(adapter.load_vae(), clip.frames.unsqueeze(0))[0]
    torch.testing.assert_close(
        torch.load(out / "latent" / rec["latent_path"]), expected, rtol=1e-5, atol=1e-5
    )
    adapter.load_text_encoder()
    cond = adapter.encode_prompts([rec["caption"]])
    torch.testing.assert_close(
        torch.load(out / "prompt_embed" / rec["prompt_embed_path"]), cond["prompt_embeds"][0]
    )
    assert torch.equal(
        torch.load(out / "prompt_attention_mask" / rec["prompt_attention_mask"]),
        cond["prompt_attention_mask"][0],
    )


def test_validation_prompts_are_embedded(tiny_mochi, synthetic, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\n\na green triangle moving down\n")
    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir, "--validation_prompt_txt", prompts) == 0
    records = json.loads((out / "validation" / "videos2caption.json").read_text())
    assert [r["caption"] for r in records] == ["a red circle moving right", "a green triangle moving down"]
    for rec in records:
        assert torch.load(out / "validation" / "prompt_embed" / rec["prompt_embed_path"]).shape == (256, 32)


def test_bad_items_are_skipped_and_reported(tiny_mochi, tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", num_videos=3, num_images=0, seed=1)
    bad = add_bad_items(data.mochi_dir)
    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", data.mochi_dir) == 0
    assert len(index(out)) == 3
    skipped = report(out)["skipped"]
    stdout = capsys.readouterr().out
    for name in bad:
        assert any(name in s["item"] for s in skipped), (name, skipped)
        assert name in stdout
    assert all(s["reason"] for s in skipped)
    assert len(skipped) == len(bad)
    # --strict turns any skip into a failure exit code.
    assert run(tiny_mochi, out, "--data_dir", data.mochi_dir, "--strict") == 1


def test_nothing_usable_exits_non_zero(tiny_mochi, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")
    (folder / "a.txt").write_text("a caption")
    assert run(tiny_mochi, tmp_path / "out", "--data_dir", folder) == 1


def test_invalid_settings_are_refused_before_work(tmp_path, capsys):
    code = preprocess_main(["--model_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"),
                            "--data_dir", str(tmp_path), "--num_frames", "24"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "6k+1" in err and "19 or 25" in err
    assert not (tmp_path / "o").exists()
    code = preprocess_main(["--model_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"),
                            "--data_dir", str(tmp_path)])  # fmt: skip
    assert code == 2 and "model_index.json" in capsys.readouterr().err


def test_rerun_reuses_and_refuses_other_settings(tiny_mochi, synthetic, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir) == 0
    first = latents_of(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "latent").glob("*.pt")}
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir) == 0
    assert report(out)["encoded_this_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "latent").glob("*.pt")} == mtimes
    capsys.readouterr()
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir, "--crop", "none") == 2
    assert "crop: 'center' -> 'none'" in capsys.readouterr().err
    assert {k: v.shape for k, v in latents_of(out).items()} == {k: v.shape for k, v in first.items()}
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir, "--crop", "none", "--overwrite") == 0
    assert report(out)["encoded_this_run"] == len(first)


def test_changed_model_at_the_same_path_is_refused(tiny_mochi, synthetic, tmp_path, capsys):
    """A model rebuilt in place (here: another VAE normalisation) must not reuse the old latents."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_mochi, model)
    out = tmp_path / "out"
    assert run(model, out, "--data_dir", synthetic.mochi_dir) == 0
    config = model / "vae" / "config.json"
    vae = json.loads(config.read_text())
    config.write_text(json.dumps({**vae, "scaling_factor": 2 * vae["scaling_factor"]}))
    capsys.readouterr()
    assert run(model, out, "--data_dir", synthetic.mochi_dir) == 2
    assert "model_fingerprint" in capsys.readouterr().err
    assert run(model, out, "--data_dir", synthetic.mochi_dir, "--overwrite") == 0
    assert report(out)["encoded_this_run"] == report(out)["items_ready"] > 0


def test_changed_caption_is_re_embedded(tiny_mochi, tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", num_videos=2, num_images=0, seed=2)
    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", data.mochi_dir) == 0
    caption_file = sorted(data.mochi_dir.glob("*.txt"))[0]
    name = caption_file.stem
    before = torch.load(out / "prompt_embed" / f"{name}.pt")
    caption_file.write_text("a white star moving up")
    assert run(tiny_mochi, out, "--data_dir", data.mochi_dir) == 0
    assert report(out)["encoded_this_run"] == 0  # the latent is reused
    assert not torch.equal(torch.load(out / "prompt_embed" / f"{name}.pt"), before)
    assert {r["caption"] for r in index(out)} >= {"a white star moving up"}


def test_verify_writes_side_by_side_videos(tiny_mochi, synthetic, tmp_path):
    import av

    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", synthetic.mochi_dir, "--verify", 2) == 0
    videos = sorted((out / "verify").glob("*.mp4"))
    assert len(videos) == 2
    with av.open(str(videos[0])) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == FRAMES and (frames[0].width, frames[0].height) == (2 * WIDTH, HEIGHT)


def cli(tiny_mochi, out, data_dir) -> list[str]:
    return [sys.executable, "-m", "fastvideo.data_preprocess.preprocess", "--model_path", str(tiny_mochi),
            "--output_dir", str(out), "--data_dir", str(data_dir), "--num_frames", str(FRAMES),
            "--height", str(HEIGHT), "--width", str(WIDTH)]  # fmt: skip


def assert_same_latents(got_dir, ref_dir, count: int) -> None:
    """Bitwise: both sides run in processes with the same thread count (OMP_NUM_THREADS=1)."""
    ref, got = latents_of(ref_dir), latents_of(got_dir)
    assert ref.keys() == got.keys() and len(got) == count
    for key in ref:
        assert torch.equal(got[key], ref[key]), key


@pytest.mark.slow
def test_killed_run_resumes_to_the_complete_dataset(tiny_mochi, tmp_path, cli_env):
    data = make_synthetic_dataset(tmp_path / "data", num_videos=10, num_images=0, seed=3)
    reference = tmp_path / "reference"
    subprocess.run(cli(tiny_mochi, reference, data.mochi_dir), env=cli_env, capture_output=True, check=True)
    out = tmp_path / "out"
    cmd = cli(tiny_mochi, out, data.mochi_dir)
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "latent").glob("*.pt"))) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((out / "latent").glob("*.pt")))
    assert 2 <= done_at_kill < 10, "the run was not killed midway"
    assert not (out / "videos2caption.json").exists()
    for p in (out / "latent").glob("*.pt"):
        torch.load(p)  # no half-written file under a final name
    assert subprocess.run(cmd, env=cli_env, capture_output=True).returncode == 0
    assert report(out)["encoded_this_run"] == 10 - done_at_kill
    assert not list(out.rglob("*.tmp-*"))
    assert_same_latents(out, reference, 10)
    assert index(out) == index(reference)


@pytest.mark.slow
def test_two_rank_torchrun_equals_one_process(tiny_mochi, synthetic, tmp_path, cli_env, repo_root):
    single = tmp_path / "single"
    subprocess.run(cli(tiny_mochi, single, synthetic.mochi_dir), env=cli_env, capture_output=True, check=True)
    env = dict(cli_env, MODEL_PATH=str(tiny_mochi), DATA_DIR=str(synthetic.mochi_dir), OUTPUT_DIR=str(tmp_path / "two"),
               NUM_GPUS="2", NUM_FRAMES=str(FRAMES), HEIGHT=str(HEIGHT), WIDTH=str(WIDTH))  # fmt: skip
    proc = subprocess.run(["bash", "scripts/finetune_data_gen.sh"], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fastvideo.launch --standalone --nproc_per_node 2" in proc.stdout
    two = tmp_path / "two"
    assert index(two) == index(single)
    assert_same_latents(two, single, len(synthetic.captions))
    for rec in index(single):
        for folder, key in (
            ("prompt_embed", "prompt_embed_path"),
            ("prompt_attention_mask", "prompt_attention_mask"),
        ):
            assert torch.equal(torch.load(two / folder / rec[key]), torch.load(single / folder / rec[key]))
    assert len(json.loads((two / "validation" / "videos2caption.json").read_text())) == 3


def test_hdr_iphone_style_mov_is_converted_and_noted(tiny_mochi, tmp_path):
    """A 10-bit PQ/BT.2020 .mov goes through preprocessing with its conversion in the report."""
    from test_video import SDR_COLORS, encode_hevc10, patch_image, sdr_to_pq

    folder = tmp_path / "phone"
    folder.mkdir()
    signal = sdr_to_pq(patch_image(SDR_COLORS, size=16))
    encode_hevc10(folder / "IMG_0001.mov", signal, "smpte2084", frames=FRAMES)
    (folder / "IMG_0001.txt").write_text("a phone video of colour patches")
    out = tmp_path / "out"
    assert run(tiny_mochi, out, "--data_dir", folder) == 0
    notes = report(out)["notes"]
    assert len(notes) == 1 and "IMG_0001.mov" in notes[0]["item"]
    assert "PQ" in notes[0]["note"] and "BT.709" in notes[0]["note"]
    assert torch.load(out / "latent" / "IMG_0001.pt").shape == LATENT_VIDEO
