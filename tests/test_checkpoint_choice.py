"""Which checkpoint a resume takes: complete ones only, never a ``.tmp`` folder, a save killed between its
renames finished, and a checkpoint of another run refused unless named (fingerprints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastvideo.training.checkpoint import COMPLETE, TRAINER_STATE, choose_checkpoint, fingerprint_changes
from fastvideo.training.config import TrainConfig

RUN = {"learning_rate": 1e-3, "model_path": "abc", "seed": 0}


def fake_checkpoint(
    root: Path, step: int, name: str | None = None, *, complete: bool = True, run=None
) -> Path:
    """The files a finished save leaves (or, with complete=False, a save killed before its marker)."""
    path = Path(root) / (name or f"step-{step:08d}")
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"")
    torch.save({"step": step}, path / TRAINER_STATE)
    torch.save({}, path / "rank0.pt")
    if complete:
        marker = {"step": step, "world_size": 1, "fingerprint": RUN if run is None else run}
        (path / COMPLETE).write_text(json.dumps(marker))
    return path


def test_latest_is_the_newest_complete_folder_and_never_a_tmp(tmp_path):
    fake_checkpoint(tmp_path, 1)
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 2, "step-00000002.tmp")  # a later save of step 2, killed after its marker
    fake_checkpoint(tmp_path, 3, "step-00000003.tmp", complete=False)  # killed mid-save
    fake_checkpoint(tmp_path, 4, complete=False)  # marker missing
    with pytest.warns(UserWarning, match="skipping checkpoint .*step-00000004: no COMPLETE marker"):
        assert choose_checkpoint(tmp_path, "latest", RUN) == tmp_path / "step-00000002"


def test_a_save_killed_between_its_renames_is_finished(tmp_path):
    fake_checkpoint(tmp_path, 1)
    fake_checkpoint(tmp_path, 2, "step-00000002.tmp")  # whole, but the final rename never happened
    assert choose_checkpoint(tmp_path, "latest", RUN, repair=False) == tmp_path / "step-00000001"
    assert choose_checkpoint(tmp_path, "latest", RUN) == tmp_path / "step-00000002"
    assert not (tmp_path / "step-00000002.tmp").exists()


def test_a_checkpoint_of_another_run_is_refused_unless_named(tmp_path, capsys):
    other = {**RUN, "learning_rate": 1e-4}
    path = fake_checkpoint(tmp_path, 5, run=other)
    with pytest.raises(
        ValueError, match=r"other settings \(learning_rate: 0.0001 -> 0.001\).*--resume_from_checkpoint"
    ):
        choose_checkpoint(tmp_path, "latest", RUN)
    assert choose_checkpoint(tmp_path, str(path), RUN) == path
    assert "named explicitly, although its run differs: learning_rate" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot resume from .*: not a directory"):
        choose_checkpoint(tmp_path, str(tmp_path / "nope"), RUN)


def test_the_fingerprint_covers_model_data_and_hyperparameters_not_layout(tiny_mochi, processed, tmp_path):
    base = TrainConfig(model_path=str(tiny_mochi), data_json_path=str(processed))
    same = [
        TrainConfig(model_path=str(tiny_mochi), data_json_path=str(processed / "videos2caption.json"), sp_size=2,
                    train_batch_size=4, max_train_steps=999, output_dir="elsewhere", compile=True),
    ]  # fmt: skip
    for cfg in same:
        assert fingerprint_changes(base.fingerprint(), cfg.fingerprint()) == []
    changed = TrainConfig(
        model_path=str(tiny_mochi), data_json_path=str(processed), learning_rate=2e-5, seed=1
    )
    assert {c.split(":")[0] for c in fingerprint_changes(base.fingerprint(), changed.fingerprint())} == {
        "learning_rate",
        "seed",
    }
    other_data = tmp_path / "videos2caption.json"
    records = json.loads((processed / "videos2caption.json").read_text())[:-1]
    other_data.write_text(json.dumps(records))
    fewer = TrainConfig(model_path=str(tiny_mochi), data_json_path=str(other_data))
    assert [c.split(":")[0] for c in fingerprint_changes(base.fingerprint(), fewer.fingerprint())] == [
        "data_json_path"
    ]
