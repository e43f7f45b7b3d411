"""The CogVideoX recipes (scripts/finetune_cogvideox_lora.sh, scripts/finetune_cogvideox_sft.sh) and the
README table that maps the seeds' flags (diffusers' train_cogvideox_lora.py, cogvideox-factory's
training/cogvideox/args.py) onto fastvideo's.

    OMP_NUM_THREADS=1 pytest tests/test_cogvideox_recipes.py

The recipe test runs the LoRA script as a user does, on the tiny CogVideoX and a CogVideoX-layout root
(prompts.txt + videos.txt) of the synthetic clips, everything written under tmp_path.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import torch

from fastvideo.cli import build_parser
from fastvideo.data_preprocess.preprocess import PreprocessConfig
from fastvideo.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SECTION = "### CogVideoX recipes and the seeds' flags"

# What the LoRA recipe promises (README: the section above and its table).
LORA_RECIPE = {
    "model_type": "cogvideox", "use_lora": True, "lora_rank": 64, "lora_alpha": 64.0, "learning_rate": 1e-4,
    "optimizer": "adamw", "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_eps": 1e-8, "weight_decay": 1e-4,
    "max_grad_norm": 1.0, "lr_scheduler": "cosine_with_restarts", "activation_checkpointing": "all",
    "cfg": 0.0, "validation_guidance_scale": 6.0,
}  # fmt: skip

# Every flag of the two seeds, read from their argparse definitions (diffusers' train_cogvideox_lora.py
# and train_cogvideox_image_to_video_lora.py; cogvideox-factory's training/cogvideox/args.py).
SEED_FLAGS = """
pretrained_model_name_or_path revision variant cache_dir dataset_name dataset_config_name instance_data_root
data_root dataset_file video_column caption_column id_token height_buckets width_buckets frame_buckets
load_tensors random_flip dataloader_num_workers pin_memory validation_prompt validation_images
validation_prompt_separator num_validation_videos validation_epochs validation_steps guidance_scale
use_dynamic_cfg enable_model_cpu_offload seed rank lora_alpha mixed_precision output_dir height width
video_reshape_mode fps max_num_frames skip_frames_start skip_frames_end train_batch_size num_train_epochs
max_train_steps checkpointing_steps checkpoints_total_limit resume_from_checkpoint gradient_accumulation_steps
gradient_checkpointing learning_rate scale_lr lr_scheduler lr_warmup_steps lr_num_cycles lr_power
enable_slicing enable_tiling noised_image_dropout ignore_learned_positional_embeddings optimizer use_8bit_adam
use_8bit use_4bit use_torchao adam_beta1 beta1 adam_beta2 beta2 prodigy_beta3 beta3 prodigy_decouple
adam_weight_decay weight_decay adam_epsilon epsilon max_grad_norm prodigy_use_bias_correction
prodigy_safeguard_warmup use_cpu_offload_optimizer offload_gradients tracker_name push_to_hub hub_token
hub_model_id logging_dir allow_tf32 nccl_timeout report_to
""".split()


def test_lora_recipe_trains_with_the_seeds_settings_into_a_lora_diffusers_loads(
    tmp_path, tiny_cogvideox, synthetic, cli_env
):
    """The recipe preprocesses the CogVideoX root by itself, trains with the settings its README section
    lists, and exports a LoRA that CogVideoXPipeline.load_lora_weights loads and that changes its output."""
    from diffusers import CogVideoXPipeline

    out, data = tmp_path / "out", tmp_path / "processed"
    env = dict(cli_env, MODEL_PATH=str(tiny_cogvideox), DATA_DIR=str(synthetic.cogvideox_dir),
               DATA_JSON_PATH=str(data), OUTPUT_DIR=str(out), NUM_FRAMES="13", HEIGHT="32", WIDTH="48",
               ID_TOKEN="sks", MAX_TRAIN_STEPS="10", CHECKPOINTING_STEPS="0", VALIDATION_STEPS="0")  # fmt: skip
    proc = subprocess.run(["bash", "scripts/finetune_cogvideox_lora.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "scripts/finetune_mochi_lora.sh" in proc.stdout and "-m fastvideo.train" in proc.stdout

    assert json.loads((data / "preprocess_config.json").read_text())["id_token"] == "sks"
    config = json.loads((out / "train_config.json").read_text())
    assert {k: config[k] for k in LORA_RECIPE} == LORA_RECIPE
    assert (config["lr_warmup_steps"], config["id_token"], config["max_train_steps"]) == (1, "sks", 10)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 10

    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox)
    meta = json.loads((out / "lora" / "fastvideo_lora.json").read_text())
    pipe.load_lora_weights(out / "lora", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", meta["alpha"] / meta["rank"])
    adapted = sum("lora_B" in name for name, _ in pipe.transformer.named_parameters())
    assert adapted == 4 * len(pipe.transformer.transformer_blocks)  # to_q, to_k, to_v, to_out.0 per block

    def sample() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return pipe("a red circle moving right", num_frames=13, height=32, width=48, num_inference_steps=2,
                    guidance_scale=1.0, generator=generator, output_type="latent").frames  # fmt: skip

    with_lora = sample()
    pipe.disable_lora()
    assert not torch.equal(with_lora, sample())


def table_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    assert text.count(SECTION) == 1
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    header, rows = rows[0], rows[1:]
    assert [h.strip() for h in header] == [
        "their flag(s)",
        "default there",
        "fastvideo",
        "default here / note",
    ]
    assert all(len(row) == 4 for row in rows), [row for row in rows if len(row) != 4]
    return rows


def test_the_readme_table_names_real_flags_and_variables_and_every_seed_flag():
    """Every --flag in the table's fastvideo column is a flag of fastvideo.train or of preprocessing (or of
    scripts/download_hf.py where the cell names it), every variable is read by the recipes, and every flag
    of the seeds has a row."""
    rows = table_rows()
    ours = {
        option
        for cls in (TrainConfig, PreprocessConfig)
        for action in build_parser(cls)._actions
        for option in action.option_strings
    }
    download = set(re.findall(r'add_argument\("(--\w+)"', (REPO / "scripts" / "download_hf.py").read_text()))
    recipes = "".join(p.read_text() for p in (REPO / "scripts").glob("*.sh"))
    for _, _, fastvideo, _ in rows:
        for flag in re.findall(r"--\w+", fastvideo):
            known = download if "download_hf.py" in fastvideo else ours
            assert flag in known, f"README table names {flag}, which fastvideo does not have"
        for variable in re.findall(r"`([A-Z][A-Z0-9_]+)`", fastvideo):
            assert "${" + variable in recipes, f"README table names {variable}, which no recipe reads"
    theirs = {flag for row in rows for flag in re.findall(r"--(\w+)", row[0])}
    missing = sorted(set(SEED_FLAGS) - theirs)
    assert not missing, f"the README table has no row for the seeds' flags {missing}"
