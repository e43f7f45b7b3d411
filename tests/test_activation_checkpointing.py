"""Selective activation checkpointing on a tiny diffusers Mochi DiT: exactness, memory, block choice, parsing."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import MochiTransformer3DModel
from diffusers.models.attention_processor import MochiAttnProcessor2_0
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from fastvideo.models.tiny import TINY_MOCHI_DIT
from fastvideo.parallel.activation_checkpointing import (
    ActivationProfile,
    AutoCheckpointing,
    NoCheckpointing,
    SelectiveCheckpointing,
    blocks_for_fraction,
    choose_blocks_for_budget,
    extrapolate_profile,
    profile_activations,
    resolve_policy,
    saved_tensor_bytes,
    spread_indices,
)

# diffusers' MochiRoPE enters a float32 CPU autocast, which torch declines with a warning.
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

TINY = {**TINY_MOCHI_DIT, "num_layers": 4}


def tiny_model() -> MochiTransformer3DModel:
    torch.manual_seed(0)
    return MochiTransformer3DModel(**TINY)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[:, 11:] = False  # padded prompt tokens: the processor drops them from attention
    return dict(
        hidden_states=torch.randn(1, 12, 3, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(1, 16, 32, generator=g),
        timestep=torch.tensor([437.0]),
        encoder_attention_mask=mask,
    )


def forward(model, inputs) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0]


def forward_backward(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = forward(model, inputs)
    # A fixed, non-uniform output gradient, so every output element matters.
    weight = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
    (out * weight).sum().backward()
    # state_dict keys are the model's own names whether or not blocks are wrapped.
    params = model.state_dict(keep_vars=True)
    return out.detach(), {name: p.grad for name, p in params.items() if p.requires_grad}


@pytest.fixture(scope="module")
def reference(inputs):
    return forward_backward(tiny_model(), inputs)


@pytest.fixture(scope="module")
def profile(inputs) -> ActivationProfile:
    model = tiny_model()
    return profile_activations(model, lambda: forward(model, inputs))


def wrapped_indices(model) -> list[int]:
    return [i for i, b in enumerate(model.transformer_blocks) if isinstance(b, CheckpointWrapper)]


# --- choosing blocks ------------------------------------------------------------------------------


def test_spread_indices_are_even():
    assert spread_indices(8, 2) == [0, 4]
    assert spread_indices(8, 3) == [0, 2, 5]
    assert spread_indices(4, 1) == [0]
    assert spread_indices(4, 0) == []
    assert spread_indices(8, 8) == list(range(8))
    for depth in range(1, 13):
        for count in range(1, depth + 1):
            idx = spread_indices(depth, count)
            gaps = [
                b - a for a, b in zip(idx, idx[1:] + [idx[0] + depth], strict=True)
            ]  # wrap around the depth
            assert len(set(idx)) == count and idx == sorted(idx) and idx[0] == 0
            assert max(gaps) - min(gaps) <= 1, (depth, count, idx)
    with pytest.raises(ValueError):
        spread_indices(4, 5)


def test_fraction_rounding():
    assert blocks_for_fraction(4, 0.5) == 2
    assert blocks_for_fraction(4, 0.3) == 1  # 1.2 -> nearest
    assert blocks_for_fraction(4, 0.375) == 2  # 1.5 -> halves round up
    assert blocks_for_fraction(4, 0.6) == 2  # 2.4
    assert blocks_for_fraction(4, 0.1) == 1  # 0.4, but any checkpointing asked for gets one block
    assert blocks_for_fraction(4, 0.0) == 0
    assert blocks_for_fraction(4, 1.0) == 4
    assert blocks_for_fraction(48, 0.25) == 12
    assert SelectiveCheckpointing(fraction=0.25).choose(8) == [0, 4]
    assert SelectiveCheckpointing(fraction=0.5).choose(8) == [0, 2, 4, 6]
    assert SelectiveCheckpointing(num_blocks=8).choose(8) == list(range(8))


def test_policy_arguments_are_validated():
    for bad in (dict(), dict(num_blocks=1, fraction=0.5), dict(num_blocks=-1), dict(fraction=1.5)):
        with pytest.raises(ValueError):
            SelectiveCheckpointing(**bad)
    with pytest.raises(ValueError, match="only 4 blocks"):
        SelectiveCheckpointing(num_blocks=5).apply(tiny_model())
    with pytest.raises(ValueError):
        AutoCheckpointing(0, probe=lambda: None)
    with pytest.raises(ValueError):
        AutoCheckpointing(100)  # neither a probe nor a profile


def test_resolve_policy_parsing():
    def probe():
        return None

    assert resolve_policy("none") == NoCheckpointing()
    assert resolve_policy(" ALL ") == SelectiveCheckpointing(fraction=1.0)
    assert resolve_policy("4") == SelectiveCheckpointing(num_blocks=4)
    assert resolve_policy("1") == SelectiveCheckpointing(num_blocks=1)
    assert resolve_policy("0.5") == SelectiveCheckpointing(fraction=0.5)
    assert resolve_policy("1.0") == SelectiveCheckpointing(fraction=1.0)
    assert resolve_policy("0") == SelectiveCheckpointing(num_blocks=0)
    auto = resolve_policy("auto", budget_bytes=123, example_forward=probe)
    assert isinstance(auto, AutoCheckpointing) and auto.budget_bytes == 123 and auto.probe is probe
    assert resolve_policy("2", budget_bytes=123) == SelectiveCheckpointing(num_blocks=2)
    with pytest.raises(ValueError, match="budget"):
        resolve_policy("auto", example_forward=probe)
    with pytest.raises(ValueError, match="budget"):
        resolve_policy("auto", budget_bytes=123)
    for bad in ("", "some", "-1", "1.5", "nan", "inf", "2/3"):
        with pytest.raises(ValueError, match="not understood"):
            resolve_policy(bad)


# --- exactness ------------------------------------------------------------------------------------


def _mid_budget_auto(profile: ActivationProfile) -> AutoCheckpointing:
    return AutoCheckpointing((profile.predict([]) + profile.predict(range(4))) // 2, profile=profile)


POLICIES = {
    "none": (lambda profile: NoCheckpointing(), []),
    "one": (lambda profile: SelectiveCheckpointing(num_blocks=1), [0]),
    "half": (lambda profile: SelectiveCheckpointing(fraction=0.5), [0, 2]),
    "all": (lambda profile: resolve_policy("all"), [0, 1, 2, 3]),
    "auto": (_mid_budget_auto, None),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_keeps_outputs_and_gradients(name, inputs, reference, profile):
    make, expected = POLICIES[name]
    model = tiny_model()
    chosen = make(profile).apply(model)
    if expected is not None:
        assert chosen == expected
    assert wrapped_indices(model) == chosen
    out, grads = forward_backward(model, inputs)
    ref_out, ref_grads = reference
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name_, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name_], rtol=0, atol=1e-6, msg=name_)


class CountingProcessor(MochiAttnProcessor2_0):
    """Mochi's processor, counting its calls: stands in for a sequence-parallel processor."""

    calls = 0

    def __call__(self, *args, **kwargs):
        CountingProcessor.calls += 1
        return super().__call__(*args, **kwargs)


def test_recomputation_reruns_processors_and_hooks(inputs, reference):
    model = tiny_model()
    for block in model.transformer_blocks:
        block.attn1.processor = CountingProcessor()
    hook_calls = []
    model.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, k: hook_calls.append(1), with_kwargs=True
    )
    CountingProcessor.calls = 0
    assert resolve_policy("all").apply(model) == [0, 1, 2, 3]
    out, grads = forward_backward(model, inputs)
    assert CountingProcessor.calls == 2 * 4  # forward, then once more per block in backward
    assert len(hook_calls) == 2
    torch.testing.assert_close(out, reference[0], rtol=0, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=0, atol=1e-6, msg=name)


# --- memory ---------------------------------------------------------------------------------------


def test_saved_bytes_fall_as_more_blocks_are_checkpointed(inputs, profile):
    measured = {}
    for count in (0, 1, 2, 4):
        model = tiny_model()
        chosen = SelectiveCheckpointing(num_blocks=count).apply(model)
        measured[count] = saved_tensor_bytes(lambda model=model: forward(model, inputs))
        # The prediction also counts the inputs a wrapped block keeps alive by reference.
        assert measured[count] <= profile.predict(chosen)
    assert measured[0] > measured[1] > measured[2] > measured[4] > 0, measured
    assert measured[0] == profile.predict([])  # same ledger, nothing wrapped: exact


def test_saved_tensor_bytes_counts_storages_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)

    def fn():
        y = x @ w.t()  # saves x and a view of the parameter
        return y * y.exp()  # saves y and exp(y) (y once, though used twice)

    assert saved_tensor_bytes(fn) == 3 * 4 * 8 * 4


def test_profile_sums_per_block(profile):
    assert profile.num_blocks == 4
    for i in range(4):
        assert profile.inside[i] and profile.inputs[i]
    # Checkpointing any block frees more than it keeps.
    none = profile.predict([])
    assert all(profile.predict([i]) < none for i in range(4))
    assert profile.predict(range(4)) < profile.predict([0, 2]) < profile.predict([0]) < none


def test_auto_picks_fewest_blocks_within_budget(inputs, profile):
    none, everything = profile.predict([]), profile.predict(range(4))
    budget = (none + everything) // 2
    model = tiny_model()
    policy = AutoCheckpointing(budget, probe=lambda: forward(model, inputs))
    chosen = policy.apply(model)
    assert policy.profile.predict([]) == none  # the probe ran on the bare model
    assert policy.predicted_bytes == profile.predict(chosen) <= budget
    assert 0 < len(chosen) < 4 and wrapped_indices(model) == chosen
    fewer = itertools.combinations(range(4), len(chosen) - 1)
    assert all(profile.predict(subset) > budget for subset in fewer)
    assert saved_tensor_bytes(lambda: forward(model, inputs)) <= budget


def test_auto_edges_of_budget(profile):
    none, everything = profile.predict([]), profile.predict(range(4))
    assert choose_blocks_for_budget(profile, none) == []
    assert choose_blocks_for_budget(profile, everything) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=f"smallest budget that fits is {everything} bytes"):
        choose_blocks_for_budget(profile, everything - 1)
    with pytest.raises(ValueError, match=str(everything)):
        AutoCheckpointing(1000, profile=profile).apply(tiny_model())


# --- names and re-application ---------------------------------------------------------------------


def test_state_dict_keys_unchanged_and_loadable():
    model = tiny_model()
    before = model.state_dict()
    resolve_policy("all").apply(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert not any("_checkpoint_wrapped_module" in k for k in after)
    fresh = tiny_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    SelectiveCheckpointing(num_blocks=2).apply(fresh)
    fresh.load_state_dict(before, strict=True)  # plain keys load into a wrapped model
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_apply_is_idempotent_and_rejects_a_different_policy(inputs, profile):
    model = tiny_model()
    policy = SelectiveCheckpointing(num_blocks=2)
    assert policy.apply(model) == [0, 2]
    assert policy.apply(model) == [0, 2]
    assert resolve_policy("0.5").apply(model) == [0, 2]
    for i in (0, 2):
        assert not isinstance(model.transformer_blocks[i]._checkpoint_wrapped_module, CheckpointWrapper)
    with pytest.raises(ValueError, match="already checkpointed"):
        resolve_policy("all").apply(model)
    with pytest.raises(ValueError, match="already checkpointed"):
        NoCheckpointing().apply(model)
    assert wrapped_indices(model) == [0, 2]
    # Profiling a wrapped model measures the bare blocks and puts the wrappers back.
    again = profile_activations(model, lambda: forward(model, inputs))
    assert again.predict([]) == profile.predict([])
    assert wrapped_indices(model) == [0, 2]


def test_rejects_diffusers_gradient_checkpointing():
    model = tiny_model()
    model.enable_gradient_checkpointing()
    assert NoCheckpointing().apply(model) == []
    with pytest.raises(ValueError, match="gradient checkpointing"):
        resolve_policy("all").apply(model)
    assert wrapped_indices(model) == []


def test_profile_extrapolated_from_two_blocks_predicts_the_deep_model(inputs, profile):
    """The trainer sizes a deep model from a 2-block copy; predictions must hold for the real depth."""
    torch.manual_seed(0)
    shallow = MochiTransformer3DModel(**{**TINY, "num_layers": 2})
    estimate = extrapolate_profile(profile_activations(shallow, lambda: forward(shallow, inputs)), 4)
    assert estimate.num_blocks == 4
    for wrapped in ([], [0], [0, 2], [0, 1, 2, 3]):
        real = profile.predict(wrapped)
        # Errs high (shared storages counted per block), never low, and stays close.
        assert real <= estimate.predict(wrapped) <= 1.3 * real, wrapped
    with pytest.raises(ValueError, match="at least 2 blocks"):
        extrapolate_profile(ActivationProfile({}, frozenset(), (frozenset(),), (frozenset(),)), 4)
