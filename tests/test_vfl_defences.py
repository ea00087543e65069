"""Label defences: CoAE/DCAE, noise, sparsification and MID, alone and inside short split-training runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from fl_kd.checkpoint import CheckpointError
from fl_kd.config import ConfigError
from fl_kd.vfl import run_vfl
from fl_kd.vfl.config import DefenceConfig
from fl_kd.vfl.defences import (
    CoAEDefence,
    ConfusionalAutoencoder,
    DCAEDefence,
    GaussianNoiseDefence,
    GradientSparsificationDefence,
    LaplaceNoiseDefence,
    MIDDefence,
    VariationalBottleneck,
    available_defences,
    build_defence,
    check_autoencoder,
    discretise,
    load_autoencoder,
    load_or_train_autoencoder,
    save_autoencoder,
    sparsify_rows,
    train_autoencoder,
)
from fl_kd.vfl.defences.coae import coae_loss, sharpen, synthetic_labels
from fl_kd.vfl.defences.noise import clip_rows

CAE_SETTINGS = {"entropy_weight": 2.0, "epochs": 1, "num_train": 30_000, "seed": 0}
"""One epoch over the authors' 30 000 synthetic labels already passes for C=2 (about 1 s on one core)."""


@pytest.fixture(scope="module")
def cae_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache file holding the binary autoencoder, so the whole module trains it once."""
    path = tmp_path_factory.mktemp("cae") / "binary.pt"
    load_or_train_autoencoder(path, 2, **CAE_SETTINGS)
    return path


@pytest.fixture(scope="module")
def binary_autoencoder(cae_cache: Path) -> ConfusionalAutoencoder:
    return load_or_train_autoencoder(cae_cache, 2, **CAE_SETTINGS)


# --- CoAE -----------------------------------------------------------------------------------------


def test_coae_loss_matches_hand_computation() -> None:
    labels = torch.tensor([[1.0, 0.0]])
    confused = torch.tensor([[0.5, 0.5]])
    decoded = torch.tensor([[1.0, 0.0]])
    reconstruction = math.log(1 + math.exp(-1))  # CE of softmax([1, 0]) against class 0
    confusion = math.log(2)  # CE of softmax([0.5, 0.5]) against class 0
    entropy = -0.5 * math.log(0.5 + 1e-6)  # mean over both entries of -p log(p + 1e-6)
    expected = 10 * reconstruction - confusion - 2.0 * entropy
    assert float(coae_loss(labels, confused, decoded, entropy_weight=2.0)) == pytest.approx(expected, rel=1e-5)


def test_synthetic_labels_are_near_one_hot_and_sharpen_is_identity_at_one() -> None:
    labels = synthetic_labels(2000, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(2000))
    assert float((labels.max(dim=1).values > 0.9).float().mean()) > 0.75
    probabilities = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    torch.testing.assert_close(sharpen(probabilities, 1.0), probabilities)
    squared = torch.tensor([[0.04, 0.64], [0.36, 0.16]])
    torch.testing.assert_close(sharpen(probabilities, 0.5), squared / squared.sum(dim=1, keepdim=True))


def test_coae_binary_meets_acceptance(binary_autoencoder: ConfusionalAutoencoder) -> None:
    # Acceptance from docs/methods.md: decoder recovery "acc p" >= 0.99 and confusion "acc n" ~ 1.
    acc_p, acc_n = check_autoencoder(binary_autoencoder)
    assert acc_p >= 0.99
    assert acc_n >= 0.95
    assert binary_autoencoder.encode_dim == 14
    assert binary_autoencoder.encoder[0].out_features == 14**2


def test_coae_training_is_seeded() -> None:
    first = train_autoencoder(2, epochs=1, num_train=512, seed=3)
    second = train_autoencoder(2, epochs=1, num_train=512, seed=3)
    other = train_autoencoder(2, epochs=1, num_train=512, seed=4)
    probe = torch.eye(2)
    assert torch.equal(first.encode(probe), second.encode(probe))
    assert not torch.equal(first.encode(probe), other.encode(probe))


def test_coae_save_load_round_trip(binary_autoencoder: ConfusionalAutoencoder, tmp_path: Path) -> None:
    path = tmp_path / "cae" / "binary.pt"
    save_autoencoder(binary_autoencoder, path, entropy_weight=2.0)
    loaded = load_autoencoder(path)
    probe = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])
    assert torch.equal(loaded.encode(probe), binary_autoencoder.encode(probe))
    assert torch.equal(loaded.decode(probe), binary_autoencoder.decode(probe))


def test_load_or_train_caches_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "cache.pt"
    trained = load_or_train_autoencoder(path, 2, epochs=1, num_train=256, seed=0)
    stamp = path.stat().st_mtime_ns
    cached = load_or_train_autoencoder(path, 2, epochs=1, num_train=256, seed=0)
    assert path.stat().st_mtime_ns == stamp
    assert torch.equal(cached.encode(torch.eye(2)), trained.encode(torch.eye(2)))
    with pytest.raises(ValueError, match="trained with"):
        load_or_train_autoencoder(path, 2, epochs=1, num_train=256, seed=1)


@pytest.mark.parametrize("kind", ["folder", "empty", "text", "other dict", "under a file"])
def test_an_unusable_autoencoder_path_is_named_before_any_training(tmp_path: Path, kind: str) -> None:
    """Each raised a bare IsADirectoryError, EOFError or KeyError, or (a folder that cannot be made) failed only once
    the autoencoder was trained."""
    path = tmp_path / "ae.pt"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "other dict":
        torch.save({"a": torch.zeros(1)}, path)
    else:
        path.write_text("a file")
        path = path / "ae.pt"
    with pytest.raises((CheckpointError, ConfigError), match=str(path)):
        load_or_train_autoencoder(path, 2, epochs=1, num_train=10**9, seed=0)  # a training would not end soon


def test_coae_defence_confuses_targets_and_decodes_them_back(
    binary_autoencoder: ConfusionalAutoencoder,
) -> None:
    defence = CoAEDefence(autoencoder=binary_autoencoder)
    defence.setup(2, [4], seed=0)
    labels = torch.tensor([0, 1, 1, 0])
    targets = defence.encode_targets(labels, 2)
    assert targets.shape == (4, 2)
    assert torch.equal(targets.argmax(dim=1), 1 - labels)
    assert torch.equal(defence.decode_probabilities(targets).argmax(dim=1), labels)
    with pytest.raises(ValueError, match="trained for 2 classes"):
        CoAEDefence(autoencoder=binary_autoencoder).setup(3, [4], seed=0)


# --- gradient defences ----------------------------------------------------------------------------


def test_discretise_by_hand() -> None:
    gradient = torch.tensor([[0.26, -0.74, 5.0, -5.0]])
    # levels k * 0.5 for k in [-2, 2]: 0.52 -> 1, -1.48 -> -1, 10 -> 2 (clipped), -10 -> -2 (clipped)
    expected = torch.tensor([[0.5, -0.5, 1.0, -1.0]])
    torch.testing.assert_close(discretise(gradient, 0.5, 5), expected)


def test_dcae_sends_at_most_w_levels_with_a_cached_bin(binary_autoencoder: ConfusionalAutoencoder) -> None:
    defence = DCAEDefence(bin_numbers=6, autoencoder=binary_autoencoder)
    defence.setup(2, [8, 8], seed=0)
    gen = torch.Generator().manual_seed(0)
    first = torch.randn(64, 8, generator=gen)
    sent = defence.protect_gradient(0, first)
    assert torch.unique(sent).numel() <= 7
    bin_size = 2 * float(first.std()) / 3
    assert defence.discretiser.bin_sizes[0] == pytest.approx(bin_size)
    assert torch.allclose(sent / bin_size, torch.round(sent / bin_size), atol=1e-5)
    # the bin is fixed by the first gradient: a hundred times smaller gradient now collapses to zero
    assert torch.count_nonzero(defence.protect_gradient(0, first / 100)) == 0
    assert 1 not in defence.discretiser.bin_sizes


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_noise_has_the_requested_scale_and_is_seeded(kind: str) -> None:
    scale = 0.5
    defence = build_defence(kind, scale=scale)
    defence.setup(2, [50], seed=11)
    gradient = torch.full((2000, 50), 0.25)
    noise = defence.protect_gradient(0, gradient) - gradient
    assert abs(float(noise.mean())) < 0.01
    expected_std = scale if kind == "gaussian" else math.sqrt(2) * scale
    assert float(noise.std()) == pytest.approx(expected_std, rel=0.02)
    if kind == "laplace":
        assert float(noise.abs().mean()) == pytest.approx(scale, rel=0.02)
    again = build_defence(kind, scale=scale)
    again.setup(2, [50], seed=11)
    assert torch.equal(again.protect_gradient(0, gradient) - gradient, noise)
    other = build_defence(kind, scale=scale)
    other.setup(2, [50], seed=12)
    assert not torch.equal(other.protect_gradient(0, gradient) - gradient, noise)


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_relative_noise_keeps_every_row_at_the_same_noise_to_signal_ratio(kind: str) -> None:
    scale, rows, width = 3.0, 4000, 10
    defence = build_defence(kind, scale=scale, relative=True)
    defence.setup(10, [width], seed=5)
    norms = torch.tensor([1e-4, 1e-2, 1.0, 0.0]).repeat_interleave(rows)
    gradient = torch.randn(4 * rows, width, generator=torch.Generator().manual_seed(1))
    gradient = gradient / gradient.norm(dim=1, keepdim=True) * norms[:, None]
    noise = defence.protect_gradient(0, gradient) - gradient
    ratio = noise.norm(dim=1) / norms.clamp_min(1e-30)
    per_entry = scale if kind == "gaussian" else math.sqrt(2) * scale
    for block in range(3):  # rows a hundred and ten thousand times apart get noise in the same proportion
        mean_square = float(ratio[block * rows : (block + 1) * rows].pow(2).mean())
        assert mean_square == pytest.approx(per_entry**2, rel=0.05)
    assert torch.count_nonzero(noise[3 * rows :]) == 0  # a zero row stays zero: no noise to hide nothing
    fixed = build_defence(kind, scale=scale)
    fixed.setup(10, [width], seed=5)
    assert float((fixed.protect_gradient(0, gradient) - gradient)[:rows].std()) == pytest.approx(per_entry, rel=0.05)
    with pytest.raises(ValueError, match="relative"):
        DefenceConfig(kind, {"scale": 1.0, "relative": 1.5})


def test_noise_clipping_and_zero_scale() -> None:
    gradient = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    torch.testing.assert_close(clip_rows(gradient, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    quiet = GaussianNoiseDefence(scale=0.0, clip_norm=1.0)
    torch.testing.assert_close(quiet.protect_gradient(0, gradient), clip_rows(gradient, 1.0))
    assert torch.equal(LaplaceNoiseDefence(scale=0.0).protect_gradient(0, gradient), gradient)
    with pytest.raises(ValueError, match="non-negative"):
        GaussianNoiseDefence(scale=-1.0)


def test_sparsification_zeros_the_smallest_fraction_per_row() -> None:
    gradient = torch.tensor([[0.1, -3.0, 0.2, 4.0], [-5.0, 0.3, 0.01, -0.2]])
    torch.testing.assert_close(
        sparsify_rows(gradient, 0.5), torch.tensor([[0.0, -3.0, 0.0, 4.0], [-5.0, 0.3, 0.0, 0.0]])
    )
    dense = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    for fraction, zeros in ((0.0, 0), (0.25, 5), (0.9, 18), (1.0, 20)):
        sent = GradientSparsificationDefence(fraction).protect_gradient(0, dense)
        assert (sent == 0).sum(dim=1).tolist() == [zeros] * 30
        if 0 < zeros < 20:
            # every kept entry is at least as large as every dropped one in its row
            magnitude, kept = dense.abs(), sent != 0
            smallest_kept = magnitude[kept].reshape(30, -1).min(dim=1).values
            largest_dropped = magnitude[~kept].reshape(30, -1).max(dim=1).values
            assert bool((smallest_kept >= largest_dropped).all())
    with pytest.raises(ValueError, match="fraction"):
        GradientSparsificationDefence(1.5)


# --- MID ------------------------------------------------------------------------------------------


def test_mid_adds_a_positive_kl_and_is_deterministic_at_inference() -> None:
    defence = MIDDefence(weight=0.1)
    defence.setup(2, [6, 4], seed=0)
    assert len(defence.parameters()) == 2 * 6
    h0, h1 = torch.randn(5, 6), torch.randn(5, 4)
    out0, out1 = defence.transform_embedding(0, h0), defence.transform_embedding(1, h1)
    assert out0.shape == (5, 6) and out1.shape == (5, 4)
    extra = defence.extra_loss()
    assert extra is not None and bool(torch.isfinite(extra)) and float(extra.detach()) > 0
    assert defence.extra_loss() is None  # consumed by the batch that produced it
    extra.backward()
    bottleneck = defence.bottlenecks[0]
    assert isinstance(bottleneck, VariationalBottleneck)
    assert all(p.grad is not None for p in bottleneck.encoder.parameters())
    with torch.no_grad():
        first, second = defence.transform_embedding(0, h0), defence.transform_embedding(0, h0)
    assert torch.equal(first, second)
    assert defence.extra_loss() is None


def test_mid_trains_its_bottleneck_inside_a_run() -> None:
    data = tiny_task()
    config = {
        "defence": {"name": "mid", "params": {"weight": 0.01}},
        "vfl_model": {"top": "mlp"},
        "training": {"epochs": 3},
        "attack": {},
    }
    result = run_vfl(config, data=data)
    assert all(math.isfinite(loss) and loss > 0 for loss in result["train_loss"])
    assert result["mp"] > 0.7


# --- registry and short runs ----------------------------------------------------------------------


@dataclass
class Tiny:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int = 2
    input_shape: tuple[int, ...] = (6,)


def tiny_task() -> Tiny:
    """Binary labels that need a column of each party."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(240, 6, generator=gen)
    y = (x[:, 0] + x[:, 4] > 0).long()
    return Tiny(x[:160], y[:160], x[160:], y[160:])


def test_registry_knows_every_defence_and_rejects_bad_input() -> None:
    assert {"none", "coae", "dcae", "gaussian", "laplace", "sparsification", "mid"} <= set(available_defences())
    with pytest.raises(ValueError, match="unknown defence"):
        build_defence("armour")
    with pytest.raises(ValueError, match="bad parameters"):
        build_defence("gaussian", sigma=1.0)


DEFENCE_PARAMS: dict[str, dict[str, Any]] = {
    "none": {},
    "coae": {},
    "cae": {},
    "dcae": {"bin_numbers": 8},
    "discrete_sgd": {"bin_numbers": 8},
    "gaussian": {"scale": 0.01},
    "laplace": {"scale": 0.01, "clip_norm": 1.0},
    "sparsification": {"fraction": 0.75},
    "mid": {"weight": 0.01},
    "coae_noise": {"scale": 0.001},
    "randomised_label": {"epsilon": 4.0},
    "marvell": {"power_ratio": 0.25},
}


# randomised_label needs the sum top: tests/test_vfl_label_defences.py checks that the mlp top is refused.
@pytest.mark.parametrize(
    ("name", "top"),
    [
        (name, top)
        for name in sorted(DEFENCE_PARAMS)
        for top in ("mlp", "sum")
        if (name, top) != ("randomised_label", "mlp")
    ],
)
def test_each_defence_runs_in_short_two_party_training(name: str, top: str, cae_cache: Path) -> None:
    assert set(DEFENCE_PARAMS) == set(available_defences())
    params = dict(DEFENCE_PARAMS[name])
    if name in ("coae", "cae", "dcae", "coae_noise"):
        # same settings as the cached autoencoder (the label party's seed is the run seed, 0), so it is reused
        params.update(path=str(cae_cache), epochs=CAE_SETTINGS["epochs"], num_train=CAE_SETTINGS["num_train"])
    config = {
        "defence": {"name": name, "params": params},
        "vfl_model": {"top": top},
        "training": {"epochs": 2, "batch_size": 32},
        "attack": {},
    }
    result = run_vfl(config, data=tiny_task())
    assert result["skipped_batches"] == 0
    assert all(math.isfinite(loss) for loss in result["train_loss"])
    assert result["mp"] > 0.6  # better than chance after two epochs, even defended
