"""Model zoo, device profiles and model reports (fl_kd.models)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fl_kd.models import (
    DeviceProfile,
    DeviceTier,
    assign_tiers,
    available_models,
    build_model,
    count_flops,
    count_parameters,
    format_model_report,
    model_report,
    server_to_client_ratio,
    simulated_seconds,
    tier_counts,
)
from fl_kd.models.presets import DEVICE_PROFILES

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
CNN_CLIENTS = ["cnn_tiny", "cnn_small", "cnn_medium"]
MLP_CLIENTS = ["mlp_tiny", "mlp_small", "mlp_medium"]
FAMILIES = [
    (CNN_CLIENTS, "resnet_server", IMAGE_SHAPES),
    (CNN_CLIENTS, "cnn_server", IMAGE_SHAPES),
    (MLP_CLIENTS, "mlp_server", [(30,), (13,)]),
]


def three_tier(**overrides: float) -> DeviceProfile:
    shares = {"low": 0.4, "mid": 0.4, "high": 0.2, **overrides}
    models = {"low": "cnn_tiny", "mid": "cnn_small", "high": "cnn_medium"}
    tiers = {name: {"model": models[name], "share": share} for name, share in shares.items()}
    return DeviceProfile.from_dict({"name": "t", "server_model": "resnet_server", "tiers": tiers})


def profile_with(*shares: float) -> DeviceProfile:
    tiers = tuple(DeviceTier(f"t{i}", "mlp_tiny", share) for i, share in enumerate(shares))
    return DeviceProfile("p", "mlp_server", tiers)


# --- model zoo ---------------------------------------------------------------------------------------------


def test_registry_lists_every_tier_and_server() -> None:
    assert available_models() == sorted(CNN_CLIENTS + MLP_CLIENTS + ["resnet_server", "cnn_server", "mlp_server"])
    assert available_models("tabular") == sorted(MLP_CLIENTS + ["mlp_server"])


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("name", CNN_CLIENTS + ["resnet_server", "cnn_server"])
def test_image_models_map_any_dataset_shape_to_logits(name: str, shape: tuple[int, ...], num_classes: int) -> None:
    model = build_model(name, shape, num_classes, seed=0)
    logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 5), (2, 3, 9)])
@pytest.mark.parametrize("name", CNN_CLIENTS + ["resnet_server", "cnn_server"])
def test_image_models_accept_odd_and_tiny_images(name: str, shape: tuple[int, ...]) -> None:
    assert build_model(name, shape, 4, seed=0)(torch.rand(2, *shape)).shape == (2, 4)


@pytest.mark.parametrize("num_classes", [2, 10, 100])
@pytest.mark.parametrize("name", MLP_CLIENTS + ["mlp_server"])
def test_mlps_map_features_to_logits(name: str, num_classes: int) -> None:
    logits = build_model(name, (30,), num_classes, seed=0)(torch.randn(5, 30))
    assert logits.shape == (5, num_classes)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize(("clients", "server", "shapes"), FAMILIES)
def test_server_has_ten_times_the_largest_client(
    clients: list[str], server: str, shapes: list[tuple[int, ...]], num_classes: int
) -> None:
    for shape in shapes:
        sizes = [count_parameters(build_model(name, shape, num_classes, seed=0)) for name in clients]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), "tiers must grow tiny < small < medium"
        assert count_parameters(build_model(server, shape, num_classes, seed=0)) >= 10 * sizes[-1]


@pytest.mark.parametrize("name", ["cnn_small", "resnet_server", "cnn_server", "mlp_medium"])
def test_init_is_deterministic_given_the_seed(name: str) -> None:
    shape = (30,) if name.startswith("mlp") else (1, 8, 8)

    def weights(model: nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(3)
    first = weights(build_model(name, shape, 10))
    torch.manual_seed(3)
    second = weights(build_model(name, shape, 10))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    before = torch.get_rng_state()
    seeded = weights(build_model(name, shape, 10, seed=3))
    assert torch.equal(torch.get_rng_state(), before), "seed= must not touch the global generator"
    assert all(torch.equal(a, b) for a, b in zip(first, seeded, strict=True))
    other = weights(build_model(name, shape, 10, seed=4))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("name", ["cnn_tiny", "cnn_medium", "resnet_server"])
def test_image_models_have_no_batch_statistics(name: str) -> None:
    # GroupNorm: a sample's logits must not depend on its batch mates, even in train mode.
    model = build_model(name, (1, 8, 8), 10, seed=0).train()
    batch = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[:1], model(batch[:1]))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_every_server_kernel_tap_gets_gradient(shape: tuple[int, ...]) -> None:
    # On 8x8 inputs the last stage must stay at 2x2: at 1x1 a padded 3x3 kernel only ever uses its centre.
    model = build_model("resnet_server", shape, 10, seed=0)
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)  # undo the zero-init of residual branches, which blocks gradient
    model(torch.rand(4, *shape)).sum().backward()
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            assert module.weight.grad is not None
            assert (module.weight.grad.abs().sum(dim=(0, 1)) > 0).all()


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_wide_cnn_server_is_the_fmnist_profiles_server_and_dwarfs_its_tiers(shape: tuple[int, ...]) -> None:
    profile = DEVICE_PROFILES["three_tier_fmnist"]
    assert profile.server_model == "cnn_server"
    assert [t.model for t in profile.tiers] == CNN_CLIENTS
    server = build_model("cnn_server", shape, 10, seed=0)
    largest = max(count_parameters(build_model(t.model, shape, 10, seed=0)) for t in profile.tiers)
    assert count_parameters(server) >= 15 * largest
    # Dropout is active in training mode only: eval is deterministic, train is not.
    x = torch.rand(4, *shape)
    server.eval()
    torch.testing.assert_close(server(x), server(x))
    torch.testing.assert_close(server(x)[:1], server(x[:1]))  # GroupNorm: no batch statistics
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in server.modules())
    server.train()
    torch.manual_seed(0)
    first = server(x)
    assert not torch.equal(first, server(x))
    first.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in server.parameters())


def test_unknown_model_name_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*cnn_tiny.*mlp_server"):
        build_model("resnet50", (1, 8, 8), 10)


def test_image_model_on_tabular_shape_says_so() -> None:
    with pytest.raises(ValueError, match=r"'cnn_tiny' is for image data.*\(C, H, W\).*tabular shape.*mlp_tiny"):
        build_model("cnn_tiny", (30,), 2)


def test_tabular_model_on_image_shape_says_so() -> None:
    with pytest.raises(ValueError, match=r"'mlp_small' is for tabular data.*\(F,\).*image shape.*cnn_tiny"):
        build_model("mlp_small", (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("shape", "num_classes", "message"),
    [
        ((1, 8), 10, "expects input_shape"),
        ((0, 8, 8), 10, "positive ints"),
        ((1, 8.5, 8), 10, "positive ints"),
        (8, 10, "sequence of ints"),
        ((1, 8, 8), 0, "num_classes"),
        ((1, 8, 8), 2.0, "num_classes"),
        ((1, 8, 8), True, "num_classes"),
    ],
)
def test_bad_shape_or_class_count_raises(shape: object, num_classes: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("cnn_small", shape, num_classes)  # type: ignore[arg-type]


# --- FLOPs and report --------------------------------------------------------------------------------------


def test_count_flops_matches_hand_count() -> None:
    # Conv 1->2, 3x3, padding 1 on 4x4: 2*4*4 outputs x 1*3*3 MACs = 288; Linear 32->3: 96 MACs.
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    assert count_flops(model, (1, 4, 4)) == 2 * (288 + 96)
    assert count_parameters(model) == (2 * 9 + 2) + (32 * 3 + 3)


def test_count_flops_handles_stride_and_groups_and_keeps_mode() -> None:
    # Conv 4->4, groups 2, stride 2 on 5x5 -> 3x3: 4*3*3 outputs x (4/2)*3*3 MACs = 648.
    model = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False)).train()
    assert count_flops(model, (4, 5, 5)) == 2 * 648
    assert model.training


def test_model_report_rows_and_table() -> None:
    profile = three_tier()
    before = torch.get_rng_state()
    rows = model_report(profile, (1, 8, 8), 10)
    assert torch.equal(torch.get_rng_state(), before)
    assert [(row.role, row.tier, row.model) for row in rows] == [
        ("server", None, "resnet_server"),
        ("client", "low", "cnn_tiny"),
        ("client", "mid", "cnn_small"),
        ("client", "high", "cnn_medium"),
    ]
    expected = count_parameters(build_model("cnn_medium", (1, 8, 8), 10))
    assert rows[3].parameters == expected and rows[3].share == pytest.approx(0.2)
    assert rows[0].mflops == pytest.approx(count_flops(build_model("resnet_server", (1, 8, 8), 10), (1, 8, 8)) / 1e6)
    assert server_to_client_ratio(rows) == rows[0].parameters / expected >= 10
    table = format_model_report(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) + 1
    assert lines[0].split()[:2] == ["role/tier", "model"] and "MFLOPs" in lines[0]
    assert lines[2].startswith("server") and f"{rows[0].parameters:,}" in lines[2]
    assert lines[-1].endswith(f"{server_to_client_ratio(rows):.1f}x")


# --- device profiles ---------------------------------------------------------------------------------------


def test_from_dict_keeps_tier_order_and_defaults() -> None:
    profile = three_tier()
    assert [tier.name for tier in profile.tiers] == ["low", "mid", "high"]
    assert profile.tiers[0] == DeviceTier("low", "cnn_tiny", 0.4)
    assert profile.tiers[0].local_epochs == 1 and profile.tiers[0].batch_size == 32
    assert profile.tiers[0].compute_speed is None and profile.modality == "image"
    assert DeviceProfile.from_dict(profile.to_dict()) == profile


@pytest.mark.parametrize(
    ("tiers", "server", "message"),
    [
        ({}, "resnet_server", "no tiers"),
        ({"a": {"model": "cnn_tiny", "share": 0.5}}, "resnet_server", "sum to 1"),
        (
            {"a": {"model": "cnn_tiny", "share": 1.2}, "b": {"model": "cnn_tiny", "share": -0.2}},
            "resnet_server",
            "share must be in",
        ),
        ({"a": {"model": "vgg", "share": 1.0}}, "resnet_server", "unknown model 'vgg'"),
        ({"a": {"model": "cnn_tiny", "share": 1.0}}, "bigmodel", "unknown model 'bigmodel'"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "local_epochs": 0}}, "resnet_server", "local_epochs"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "local_epochs": 1.5}}, "resnet_server", "local_epochs"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "batch_size": 0}}, "resnet_server", "batch_size"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "lr": 0.0}}, "resnet_server", "lr must be > 0"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "lr": -0.1}}, "resnet_server", "lr must be > 0"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "compute_speed": 0}}, "resnet_server", "compute_speed"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "bandwidth_mbps": -1}}, "resnet_server", "bandwidth_mbps"),
        ({"a": {"model": "cnn_tiny", "share": "half"}}, "resnet_server", "share must be a finite number"),
        ({"a": {"model": "cnn_tiny"}}, "resnet_server", "missing 'share'"),
        ({"a": {"model": "cnn_tiny", "share": 1.0, "shares": 1.0}}, "resnet_server", "unknown keys"),
        ({"a": {"model": "mlp_tiny", "share": 1.0}}, "resnet_server", "is for image data"),
        ({"a": None}, "resnet_server", "must be a mapping"),
    ],
)
def test_bad_profile_raises(tiers: dict[str, object], server: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeviceProfile.from_dict({"name": "bad", "server_model": server, "tiers": tiers})


def test_bad_profile_structure_raises() -> None:
    with pytest.raises(ValueError, match="missing 'server_model'"):
        DeviceProfile.from_dict({"name": "x", "tiers": {}})
    with pytest.raises(ValueError, match="tier names must be unique"):
        DeviceProfile("x", "mlp_server", (DeviceTier("a", "mlp_tiny", 0.5), DeviceTier("a", "mlp_small", 0.5)))
    with pytest.raises(ValueError, match="unknown keys"):
        DeviceProfile.from_dict({"name": "x", "server_model": "mlp_server", "tiers": {}, "seed": 1})


@pytest.mark.parametrize("name", sorted(DEVICE_PROFILES))
def test_named_profiles_round_trip_through_a_mapping(name: str) -> None:
    profile = DEVICE_PROFILES[name]
    assert profile.name == name
    written = profile.to_dict()
    assert DeviceProfile.from_dict(written) == profile
    assert DeviceProfile.from_dict(OmegaConf.create(written)) == profile  # a DictConfig is a Mapping too


def test_named_profiles_have_the_promised_tiers() -> None:
    load = DEVICE_PROFILES
    assert set(load) >= {"three_tier", "three_tier_mlp", "homogeneous"}
    summary = [(t.name, t.model, t.share) for t in load["three_tier"].tiers]
    assert summary == [("low", "cnn_tiny", 0.4), ("mid", "cnn_small", 0.4), ("high", "cnn_medium", 0.2)]
    assert [t.model for t in load["three_tier_mlp"].tiers] == MLP_CLIENTS
    assert load["three_tier_mlp"].server_model == "mlp_server"
    assert [(t.model, t.share) for t in load["homogeneous"].tiers] == [("cnn_small", 1.0)]
    for profile in load.values():
        assert all(t.compute_speed is not None and t.bandwidth_mbps is not None for t in profile.tiers)


def test_mapping_style_override_of_one_field() -> None:
    node = OmegaConf.merge(
        OmegaConf.create(DEVICE_PROFILES["three_tier"].to_dict()),
        OmegaConf.from_dotlist(["tiers.low.share=0.5", "tiers.mid.share=0.3", "tiers.high.lr=0.01"]),
    )
    assert isinstance(node, DictConfig)
    profile = DeviceProfile.from_dict(node)
    assert profile.tier("low").share == 0.5 and profile.tier("high").lr == 0.01
    assert tier_counts(profile, 10) == {"low": 5, "mid": 3, "high": 2}


# --- tier assignment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_clients", "expected"),
    [
        (10, {"low": 4, "mid": 4, "high": 2}),
        (7, {"low": 3, "mid": 3, "high": 1}),  # quotas 2.8, 2.8, 1.4 -> floors 2, 2, 1; remainders .8, .8
        (3, {"low": 1, "mid": 1, "high": 1}),  # quotas 1.2, 1.2, 0.6 -> the one seat left goes to .6
        (2, {"low": 1, "mid": 1, "high": 0}),  # fewer clients than tiers: ties go to the tier declared first
        (1, {"low": 1, "mid": 0, "high": 0}),
    ],
)
def test_tier_counts_by_largest_remainder(num_clients: int, expected: dict[str, int]) -> None:
    assert tier_counts(three_tier(), num_clients) == expected


def test_every_positive_tier_gets_a_client_when_there_are_enough() -> None:
    # Quotas 3.6, 0.2, 0.2 round to 4, 0, 0; both small tiers then take one client from the big one.
    assert list(tier_counts(profile_with(0.9, 0.05, 0.05), 4).values()) == [2, 1, 1]
    # A zero share stays empty.
    assert list(tier_counts(profile_with(0.5, 0.5, 0.0), 5).values()) == [3, 2, 0]


def test_assign_tiers_is_deterministic_and_shuffled() -> None:
    profile = three_tier()
    first = assign_tiers(profile, 20, seed=1)
    assert first == assign_tiers(profile, 20, seed=1)
    assert [t.name for t in first] != [t.name for t in assign_tiers(profile, 20, seed=2)]
    assert [t.name for t in first] != sorted((t.name for t in first), key=["low", "mid", "high"].index)
    assert {name: [t.name for t in first].count(name) for name in ("low", "mid", "high")} == tier_counts(profile, 20)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6).filter(any),
    num_clients=st.integers(min_value=1, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_assignment_properties(weights: list[int], num_clients: int, seed: int) -> None:
    total = sum(weights)
    profile = profile_with(*(w / total for w in weights))
    counts = list(tier_counts(profile, num_clients).values())
    assert sum(counts) == num_clients
    positive = [i for i, w in enumerate(weights) if w > 0]
    assert all(counts[i] == 0 for i, w in enumerate(weights) if w == 0)
    quotas = [w / total * num_clients for w in weights]
    if num_clients >= len(positive):
        assert all(counts[i] >= 1 for i in positive)
    if all(quotas[i] >= 1 for i in positive):  # no minimum-one adjustment: Hamilton's quota property holds
        assert all(abs(c - q) < 1 for c, q in zip(counts, quotas, strict=True))
    assigned = assign_tiers(profile, num_clients, seed)
    assert len(assigned) == num_clients
    assert [sum(t is tier for t in assigned) for tier in profile.tiers] == counts


@pytest.mark.parametrize("num_clients", [0, -3, 2.5, True])
def test_bad_client_count_raises(num_clients: object) -> None:
    with pytest.raises(ValueError, match="num_clients"):
        assign_tiers(three_tier(), num_clients, seed=0)  # type: ignore[arg-type]


# --- simulated time ----------------------------------------------------------------------------------------


def test_simulated_seconds_by_hand() -> None:
    tier = DeviceTier("t", "cnn_tiny", 1.0, compute_speed=2.0, bandwidth_mbps=8.0)
    # 100 samples x 2 epochs / (2.0 x 100 samples/s) = 1 s; 1e6 bytes x 8 / 8e6 bit/s = 1 s.
    assert simulated_seconds(tier, 100, 2, 1_000_000) == pytest.approx(2.0)
    assert simulated_seconds(tier, 100, 2, 0, reference_samples_per_second=50.0) == pytest.approx(2.0)


def test_simulated_seconds_unknown_speed_gives_none_only_when_needed() -> None:
    no_speed = DeviceTier("t", "cnn_tiny", 1.0, bandwidth_mbps=8.0)
    assert simulated_seconds(no_speed, 100, 1, 1000) is None
    assert simulated_seconds(no_speed, 0, 1, 1_000_000) == pytest.approx(1.0)
    assert simulated_seconds(DeviceTier("t", "cnn_tiny", 1.0), 0, 0, 0) == 0.0
    with pytest.raises(ValueError, match="payload_bytes"):
        simulated_seconds(no_speed, 1, 1, -1)


@pytest.mark.parametrize("shape", [(4, 8, 28, 28), (3, 16, 14, 14), (2, 8, 7, 7), (2, 4, 1, 1), (1, 3, 5, 8)])
def test_channels_last_max_pool_equals_torch_max_pool_in_values_and_gradients(shape: tuple[int, ...]) -> None:
    """The fast pooling is an exact stand-in: same outputs, same input gradients (ReLU zeros tie as in torch)."""
    from fl_kd.models.layers import MaxPool2x2

    generator = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(shape, generator=generator))  # post-ReLU maps: many tied zeros
    upstream = torch.randn(nn.MaxPool2d(2, ceil_mode=True)(x).shape, generator=generator)
    grads = []
    for pool in (nn.MaxPool2d(2, ceil_mode=True), MaxPool2x2()):
        inputs = x.clone().requires_grad_()
        out = pool(inputs)
        assert out.is_contiguous()
        (out * upstream).sum().backward()
        assert inputs.grad is not None
        grads.append((out.detach(), inputs.grad))
        with torch.no_grad():
            assert torch.equal(pool(x), grads[0][0])
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


def test_client_cnn_training_step_is_unchanged_by_the_fast_pool() -> None:
    """One SGD step of a client CNN gives the same weights with ``nn.MaxPool2d`` swapped back in."""
    from fl_kd.models.layers import MaxPool2x2

    torch.manual_seed(0)
    model = build_model("cnn_small", (1, 28, 28), 10)
    reference = build_model("cnn_small", (1, 28, 28), 10)
    reference.load_state_dict(model.state_dict())
    swapped = 0
    for parent in reference.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(parent, name, nn.MaxPool2d(2, ceil_mode=True))
                swapped += 1
    assert swapped > 0
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for net in (model, reference):
        optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    for (key, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
