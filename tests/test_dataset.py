"""LatentDataset, ShapeBucketSampler and collate on a small fake preprocessed folder.

The folder is written by hand (real .pt files and a videos2caption.json of two video shapes and
images), so these tests do not run the preprocessing.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from fastvideo.dataset import LatentDataset, ShapeBucketSampler, collate

C, L, D = 4, 8, 16
# (kind, latent length, height, width, how many): two video shapes and images.
GROUPS = [("video", 3, 32, 48, 10), ("video", 3, 48, 32, 7), ("image", 1, 32, 48, 5)]
NUM_ITEMS = sum(g[-1] for g in GROUPS)


def write_fake_dataset(root: Path) -> Path:
    records = []
    n = 0
    for kind, length, height, width, count in GROUPS:
        for _ in range(count):
            name = f"item{n:03d}.pt"
            g = torch.Generator().manual_seed(n)
            latent = torch.randn(C, length, height // 8, width // 8, generator=g)
            save(latent, root / "latent" / name)
            save(torch.randn(L, D, generator=g).bfloat16(), root / "prompt_embed" / name)
            save(torch.arange(L) < 3 + n % 4, root / "prompt_attention_mask" / name)
            records.append(
                {
                    "latent_path": name,
                    "prompt_embed_path": name,
                    "prompt_attention_mask": name,
                    "caption": f"caption {n}",
                    "length": length,
                    "num_frames": 1 if kind == "image" else 13,
                    "height": height,
                    "width": width,
                    "kind": kind,
                    "media_path": f"/media/{n}",
                    "media_signature": "1:1",
                }
            )
            n += 1
    (root / "videos2caption.json").write_text(json.dumps(records))
    return root


def save(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensor, path)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_fake_dataset(tmp_path / "processed")


@pytest.fixture
def dataset(data_dir) -> LatentDataset:
    return LatentDataset(data_dir)


def take(sampler: ShapeBucketSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


# --- dataset -------------------------------------------------------------------------------------
def test_items_have_shapes_and_dtypes(dataset, data_dir):
    assert len(dataset) == NUM_ITEMS
    item = dataset[0]
    assert item["latents"].shape == (C, 3, 4, 6) and item["latents"].dtype == torch.float32
    cond = item["cond"]
    assert set(cond) == {"prompt_embeds", "prompt_attention_mask"}
    assert cond["prompt_embeds"].shape == (L, D) and cond["prompt_embeds"].dtype == torch.float32
    assert cond["prompt_attention_mask"].shape == (L,) and cond["prompt_attention_mask"].dtype == torch.bool
    assert item["caption"] == "caption 0" and item["index"] == 0
    expected = torch.load(data_dir / "latent" / "item000.pt")
    assert torch.equal(item["latents"], expected)
    assert dataset[-1]["latents"].shape == (C, 1, 4, 6)
    with pytest.raises(IndexError):
        dataset[NUM_ITEMS]


def test_index_file_path_is_accepted(data_dir):
    assert len(LatentDataset(data_dir / "videos2caption.json")) == NUM_ITEMS


def test_collate_stacks_one_shape(dataset):
    batch = collate([dataset[i] for i in (0, 1, 2)])
    assert batch["latents"].shape == (3, C, 3, 4, 6)
    assert batch["cond"]["prompt_embeds"].shape == (3, L, D)
    assert batch["cond"]["prompt_attention_mask"].shape == (3, L)
    assert batch["caption"] == ["caption 0", "caption 1", "caption 2"]
    assert batch["index"].tolist() == [0, 1, 2]


def test_collate_refuses_mixed_shapes(dataset):
    with pytest.raises(ValueError, match="ShapeBucketSampler"):
        collate([dataset[0], dataset[NUM_ITEMS - 1]])


# --- clear errors --------------------------------------------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*finetune_data_gen.sh"):
        LatentDataset(tmp_path / "nope")


def test_folder_without_index(tmp_path):
    with pytest.raises(ValueError, match="no videos2caption.json.*finetune_data_gen.sh"):
        LatentDataset(tmp_path)


def test_empty_index(tmp_path):
    (tmp_path / "videos2caption.json").write_text("[]")
    with pytest.raises(ValueError, match="lists no items.*finetune_data_gen.sh"):
        LatentDataset(tmp_path)


def test_missing_listed_file(data_dir):
    (data_dir / "prompt_embed" / "item004.pt").unlink()
    with pytest.raises(ValueError, match=r"item004.pt listed in .*videos2caption.json is missing") as err:
        LatentDataset(data_dir)
    assert "\n" not in str(err.value) and "finetune_data_gen.sh" in str(err.value)


def test_no_batch_can_be_formed(dataset):
    # The biggest bucket has 10 items; 2 x 6 ranks need 12 of one shape.
    with pytest.raises(ValueError, match="no batch can be formed") as err:
        ShapeBucketSampler(dataset, batch_size=2, dp_size=6, dp_rank=0)
    message = str(err.value)
    assert "12 items" in message and "10 items" in message and "kind='image'" in message


def test_small_bucket_warns_but_samples_the_others(dataset):
    with pytest.warns(UserWarning, match="kind='image'.*5 items"):
        sampler = ShapeBucketSampler(dataset, batch_size=3, dp_size=2, dp_rank=0)
    keys = dataset.bucket_keys()
    assert all(keys[i].kind == "video" for batch in take(sampler, 10) for i in batch)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dp_rank"):
        ShapeBucketSampler(["a"] * 4, batch_size=1, dp_size=2, dp_rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        ShapeBucketSampler(["a"] * 4, batch_size=0)


# --- sampler -------------------------------------------------------------------------------------
def test_batches_never_mix_shapes(dataset):
    sampler = ShapeBucketSampler(dataset, batch_size=2, seed=3)
    # 10 // 2 + 7 // 2 + 5 // 2 batches per epoch
    assert len(sampler) == 5 + 3 + 2
    for batch in take(sampler, 3 * len(sampler)):
        assert len(batch) == 2
        assert len({tuple(dataset[i]["latents"].shape) for i in batch}) == 1


def test_epoch_uses_each_item_at_most_once_and_reshuffles(dataset):
    sampler = ShapeBucketSampler(dataset, batch_size=2, seed=0)
    first, second = sampler.epoch_batches(0), sampler.epoch_batches(1)
    for epoch in (first, second):
        flat = [i for b in epoch for i in b]
        assert len(flat) == len(set(flat)) == 20  # one item left over in each of the odd buckets
    assert first != second


def test_dp_ranks_are_disjoint_and_in_step(dataset):
    dp_size = 2
    samplers = [
        ShapeBucketSampler(dataset, batch_size=2, dp_size=dp_size, dp_rank=r, seed=1) for r in range(dp_size)
    ]
    per_rank = [s.epoch_batches(0) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0]) == 2 + 1 + 1
    flat = [set(i for b in batches for i in b) for batches in per_rank]
    assert not flat[0] & flat[1]
    keys = dataset.bucket_keys()
    for step in zip(*per_rank, strict=True):
        # At each step every rank holds the same shape, so collectives see equal work.
        assert len({keys[i] for batch in step for i in batch}) == 1


def test_same_dp_rank_gets_same_batches(dataset):
    # Ranks of one sequence-parallel group pass the same dp_rank.
    a = ShapeBucketSampler(dataset, batch_size=2, dp_size=2, dp_rank=1, seed=5)
    b = ShapeBucketSampler(dataset, batch_size=2, dp_size=2, dp_rank=1, seed=5)
    assert take(a, 12) == take(b, 12)


def test_order_is_a_function_of_the_seed(dataset):
    runs = [take(ShapeBucketSampler(dataset, batch_size=2, seed=seed), 25) for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_iteration_runs_over_epochs(dataset):
    sampler = ShapeBucketSampler(dataset, batch_size=2, seed=0)
    n = len(sampler)
    batches = take(sampler, 2 * n + 1)
    assert batches[:n] == sampler.epoch_batches(0)
    assert batches[n : 2 * n] == sampler.epoch_batches(1)
    assert sampler.state_dict()["epoch"] == 2 and sampler.state_dict()["samples"] == 2


@pytest.mark.parametrize("consumed", [3, 10, 13, 30])
def test_resume_yields_the_same_continuation(dataset, consumed):
    # 10 batches per epoch: mid-epoch, exactly at the boundary, just past it, after three epochs.
    kwargs = dict(batch_size=2, dp_size=1, dp_rank=0, seed=11)
    uninterrupted = take(ShapeBucketSampler(dataset, **kwargs), consumed + 15)

    interrupted = ShapeBucketSampler(dataset, **kwargs)
    assert take(interrupted, consumed) == uninterrupted[:consumed]
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON/pickle round trip

    resumed = ShapeBucketSampler(dataset, **kwargs)
    resumed.load_state_dict(state)
    assert take(resumed, 15) == uninterrupted[consumed:]


def test_resume_per_dp_rank(dataset):
    kwargs = dict(batch_size=1, dp_size=2, seed=2)
    for rank in range(2):
        full = take(ShapeBucketSampler(dataset, dp_rank=rank, **kwargs), 20)
        first = ShapeBucketSampler(dataset, dp_rank=rank, **kwargs)
        take(first, 7)
        resumed = ShapeBucketSampler(dataset, dp_rank=rank, **kwargs)
        resumed.load_state_dict(first.state_dict())
        assert take(resumed, 13) == full[7:]


def test_resume_with_other_settings_is_refused(dataset):
    state = ShapeBucketSampler(dataset, batch_size=2, seed=0).state_dict()
    with pytest.raises(ValueError, match="global batch 2 -> 1"):
        ShapeBucketSampler(dataset, batch_size=1, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed 0 -> 1"):
        ShapeBucketSampler(dataset, batch_size=2, seed=1).load_state_dict(state)


def test_plain_key_sequences_work():
    keys = ["a"] * 6 + ["b"] * 4
    sampler = ShapeBucketSampler(keys, batch_size=2, seed=0)
    assert len(sampler) == 5
    for batch in take(sampler, 10):
        assert len({keys[i] for i in batch}) == 1


# --- global batches: layouts, accumulation, elastic resume ---------------------------------------
LAYOUTS_OF_4 = [  # (batch_size, dp_size, accumulation): every one a global batch of 4
    (4, 1, 1),
    (2, 2, 1),
    (1, 2, 2),
    (1, 1, 4),
    (1, 4, 1),
]


def step_assignments(dataset, batch_size, dp_size, accumulation, steps, state=None) -> list[dict[int, int]]:
    """Per optimizer step: global position -> item index, gathered over every rank and micro-step."""
    samplers = []
    for rank in range(dp_size):
        sampler = ShapeBucketSampler(
            dataset, batch_size=batch_size, dp_rank=rank, dp_size=dp_size, accumulation=accumulation, seed=4
        )
        if state is not None:
            sampler.load_state_dict(state)
        samplers.append(sampler.micro_batches())
    out = []
    for _ in range(steps):
        step = {}
        for _ in range(accumulation):
            for it in samplers:
                indices, positions = next(it)
                step.update(zip(positions, indices, strict=True))
        assert sorted(step) == list(range(4)), "every position of the global batch is filled once"
        out.append(step)
    return out


def test_layouts_with_one_global_batch_see_the_same_items_at_the_same_positions(dataset):
    reference = step_assignments(dataset, *LAYOUTS_OF_4[0], steps=9)
    keys = dataset.bucket_keys()
    for layout in LAYOUTS_OF_4[1:]:
        assert step_assignments(dataset, *layout, steps=9) == reference, layout
    for step in reference:
        assert len({keys[i] for i in step.values()}) == 1  # one shape per optimizer step


@pytest.mark.parametrize("layout", LAYOUTS_OF_4[1:], ids=lambda x: "x".join(map(str, x)))
def test_data_position_resumes_on_another_layout(dataset, layout):
    """Elastic resume: 5 steps on one layout, the rest on another, equals one uninterrupted run."""
    uninterrupted = step_assignments(dataset, *LAYOUTS_OF_4[0], steps=12)
    first = ShapeBucketSampler(dataset, batch_size=4, seed=4)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 1 and state["samples"] == 4  # 4 steps per epoch (10 + 7 + 5 items by 4)
    assert step_assignments(dataset, *layout, steps=7, state=state) == uninterrupted[5:]


def test_a_position_between_micro_batches_is_refused(dataset):
    sampler = ShapeBucketSampler(dataset, batch_size=1, dp_size=1, accumulation=4, seed=4)
    take(sampler, 3)  # stopped inside an optimizer step: 3 of 4 samples
    other = ShapeBucketSampler(dataset, batch_size=2, dp_size=1, accumulation=2, seed=4)
    with pytest.raises(ValueError, match="invalid data position"):
        other.load_state_dict(sampler.state_dict())
