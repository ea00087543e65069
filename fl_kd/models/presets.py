"""The named device profiles a user picks with ``device_profile=<name>``, declared once, here.

Each ``conf/device_profile/<name>.yaml`` extends the schema node stored from the profile of that name, so a tier's
model, share and budget are written in one place and the Hydra option, the tests and the benchmarks read the same
values. A profile of one's own is still a whole YAML file (``name``, ``server_model``, ``tiers``).
"""

from __future__ import annotations

from fl_kd.models.profiles import DeviceProfile, DeviceTier


def _tiers(models: tuple[str, str, str], batch_sizes: tuple[int, int, int]) -> tuple[DeviceTier, ...]:
    """Low, mid and high devices: 40 / 40 / 20 % of the clients, 1 / 2 / 3 local epochs, each 4x faster than the
    last and on a faster link (2, 10, 50 Mbit/s), as edge fleets of phones, tablets and workstations are."""
    shares, epochs, speeds, links = (0.4, 0.4, 0.2), (1, 2, 3), (1.0, 4.0, 16.0), (2.0, 10.0, 50.0)
    names = ("low", "mid", "high")
    return tuple(
        DeviceTier(name, model, share, local_epochs, batch_size, compute_speed=speed, bandwidth_mbps=link)
        for name, model, share, local_epochs, batch_size, speed, link in zip(
            names, models, shares, epochs, batch_sizes, speeds, links, strict=True
        )
    )


CNN_TIERS = ("cnn_tiny", "cnn_small", "cnn_medium")
MLP_TIERS = ("mlp_tiny", "mlp_small", "mlp_medium")

DEVICE_PROFILES: dict[str, DeviceProfile] = {
    profile.name: profile
    for profile in (
        # Three image tiers beside a residual server (the default).
        DeviceProfile("three_tier", "resnet_server", _tiers(CNN_TIERS, (16, 32, 32))),
        # The same tiers beside the wide CNN server, whose centralised ceiling on Fashion-MNIST is above 0.91.
        DeviceProfile("three_tier_fmnist", "cnn_server", _tiers(CNN_TIERS, (16, 32, 32))),
        # Three tabular tiers beside an MLP server.
        DeviceProfile("three_tier_mlp", "mlp_server", _tiers(MLP_TIERS, (8, 16, 16))),
        # One model on every client: what weight averaging (FedAvg) needs.
        DeviceProfile(
            "homogeneous",
            "resnet_server",
            (DeviceTier("standard", "cnn_small", 1.0, compute_speed=4.0, bandwidth_mbps=10.0),),
        ),
    )
}
"""Profile name -> profile; ``conf/device_profile`` has one option file per entry."""
