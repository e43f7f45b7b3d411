"""What every family beyond Mochi must prove the same way, as one matrix over the families.

Each case is a real run on the family's tiny model (``tiny_<family>``) and the synthetic clips
preprocessed for it (``processed_<family>``); Mochi's own cases live in ``test_train.py``.
"""

from __future__ import annotations

import pytest
from runs import B4, TRAIN, assert_same_run, run

pytestmark = pytest.mark.slow
# HSDP's mesh is family-agnostic (Mochi's runs in test_train.py); what a family adds, its FSDP units, each
# family's FSDP2 test covers. HunyuanVideo, with two block lists, runs the matrix (one case: suite time).
FAMILIES = ("hunyuan",)


@pytest.mark.parametrize("family", FAMILIES)
def test_hsdp_2x2_equals_one_process(request, tmp_path, family):
    """HSDP: 2 replicas of 2 shards on 4 ranks equal one process on the global batch of 4 (clipping on;
    no validation, which 4 ranks on 2 cores make slow): losses, grad norms, weights and EMA."""
    model = request.getfixturevalue(f"tiny_{family}")
    data = request.getfixturevalue(f"processed_{family}")
    args = ["--model_type", family, *B4, "--validation_steps", 0]
    ref, out = tmp_path / "ref", tmp_path / "run"
    run(TRAIN, ref, model, data, *args, "--train_batch_size", 4)
    run(
        TRAIN, out, model, data, *args, "--dp_replicate", 2, "--dp_shard", 2, "--train_batch_size", 1, nproc=4
    )
    assert_same_run(out, ref, names=("transformer", "transformer_ema"))
