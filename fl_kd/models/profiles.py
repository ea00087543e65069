"""Device profiles: which model, share of clients and training budget each device tier gets.

Heterogeneous federations mix weak and strong devices, and knowledge-distillation methods such as FedGEMS
(Cheng et al., 2021) let each tier train an architecture it can afford while a much larger server model learns
from their logits. A :class:`DeviceProfile` names the server model and the client tiers; :func:`assign_tiers`
turns the tier shares into a deterministic, seeded assignment of tiers to client ids;
:func:`simulated_seconds` gives an optional wall-clock estimate per client from the tier's compute speed and
bandwidth.

Core code does not read YAML: a Hydra config is turned into a plain mapping and passed to
:meth:`DeviceProfile.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from numbers import Real
from typing import Any

import numpy as np

from fl_kd.config import ConfigError
from fl_kd.models.zoo import Modality, get_model_spec

SHARE_TOLERANCE = 1e-6
"""How far the tier shares may sum from 1 (YAML decimals such as 0.4 + 0.4 + 0.2 are not exact in binary)."""

REFERENCE_SAMPLES_PER_SECOND = 100.0
"""Training throughput of a tier with ``compute_speed=1.0``, in samples per second, for simulated time."""


@dataclass(frozen=True)
class DeviceTier:
    """One class of client device and the training settings it can afford.

    Attributes
    ----------
    name : str
        Tier name, e.g. ``"low"``.
    model : str
        Registered model name (see :func:`fl_kd.models.available_models`).
    share : float
        Fraction of clients in this tier, in ``[0, 1]``; the shares of a profile sum to 1.
    local_epochs : int (default: 1)
        Epochs over private data per round, >= 1.
    batch_size : int (default: 32)
        Mini-batch size, >= 1.
    lr : float (default: 0.05)
        SGD learning rate, > 0.
    compute_speed : float | None (default: None)
        Training throughput relative to a reference device that trains ``REFERENCE_SAMPLES_PER_SECOND``
        samples per second; only used for simulated time.
    bandwidth_mbps : float | None (default: None)
        Link bandwidth in Mbit/s, used for both directions; only used for simulated time.
    """

    name: str
    model: str
    share: float
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    compute_speed: float | None = None
    bandwidth_mbps: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tier name must be a non-empty string, got {self.name!r}")
        where = f"tier {self.name!r}"
        get_model_spec(self.model)  # unknown names raise ValueError listing the registry
        share = _real(self.share, f"{where}: share")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{where}: share must be in [0, 1], got {self.share!r}")
        lr = _real(self.lr, f"{where}: lr")
        if lr <= 0:
            raise ValueError(f"{where}: lr must be > 0, got {self.lr!r}")
        # Frozen dataclass: normalise numeric types (YAML may give 1 for 1.0) once, here.
        object.__setattr__(self, "share", share)
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "local_epochs", _positive_int(self.local_epochs, f"{where}: local_epochs"))
        object.__setattr__(self, "batch_size", _positive_int(self.batch_size, f"{where}: batch_size"))
        for attr in ("compute_speed", "bandwidth_mbps"):
            value = getattr(self, attr)
            if value is not None:
                value = _real(value, f"{where}: {attr}")
                if value <= 0:
                    raise ValueError(f"{where}: {attr} must be > 0 (or null to leave it out), got {value!r}")
                object.__setattr__(self, attr, value)

    @property
    def modality(self) -> Modality:
        """``"image"`` or ``"tabular"``: the input kind of :attr:`model`."""
        return get_model_spec(self.model).modality


_TIER_KEYS = tuple(f.name for f in fields(DeviceTier))


@dataclass(frozen=True)
class DeviceProfile:
    """A server model plus the client device tiers of a federation.

    Attributes
    ----------
    name : str
        Profile name, e.g. ``"three_tier"``.
    server_model : str
        Registered model name of the server.
    tiers : tuple[DeviceTier, ...]
        At least one tier; unique names; shares sum to 1 (within ``SHARE_TOLERANCE``); every model, the
        server's included, takes the same input kind (all image or all tabular).
    """

    name: str
    server_model: str
    tiers: tuple[DeviceTier, ...]

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r}"
        tiers = tuple(self.tiers)
        object.__setattr__(self, "tiers", tiers)
        if not tiers:
            raise ValueError(f"{where} has no tiers; give at least one")
        if not all(isinstance(tier, DeviceTier) for tier in tiers):
            raise ValueError(f"{where}: tiers must be DeviceTier instances")
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: tier names must be unique, got {names}")
        total = math.fsum(tier.share for tier in tiers)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            shares = ", ".join(f"{tier.name}={tier.share:g}" for tier in tiers)
            raise ValueError(f"{where}: tier shares must sum to 1, got {total:.6g} ({shares})")
        server = get_model_spec(self.server_model)
        mixed = [tier for tier in tiers if tier.modality != server.modality]
        if mixed:
            bad = ", ".join(f"{tier.name}={tier.model} ({tier.modality})" for tier in mixed)
            raise ValueError(
                f"{where}: server model {self.server_model!r} is for {server.modality} data, but tiers {bad} are not"
            )

    @property
    def modality(self) -> Modality:
        """``"image"`` or ``"tabular"``, shared by all models of the profile."""
        return get_model_spec(self.server_model).modality

    def tier(self, name: str) -> DeviceTier:
        """The tier called ``name``."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        names = [tier.name for tier in self.tiers]
        raise ValueError(f"device profile {self.name!r} has no tier {name!r}; tiers: {names}")

    @classmethod
    def from_mapping(cls, values: Mapping[Any, Any], key: str = "device_profile") -> DeviceProfile:
        """:meth:`from_dict` for the config layer: every mistake is a ``ConfigError`` naming ``key``."""
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}: {err}") from err

    @classmethod
    def from_dict(cls, d: Mapping[Any, Any]) -> DeviceProfile:
        """Build a profile from a plain mapping such as a Hydra ``device_profile`` node.

        Parameters
        ----------
        d : Mapping
            Keys ``name``, ``server_model`` and ``tiers``. ``tiers`` maps each tier name to its fields
            (``model``, ``share`` and optionally ``local_epochs``, ``batch_size``, ``lr``, ``compute_speed``,
            ``bandwidth_mbps``), so a single field can be overridden from the command line
            (``device_profile.tiers.low.share=0.5``). A sequence of mappings with a ``name`` key is accepted
            too.

        Raises
        ------
        ValueError
            Missing or unknown keys (a typo is an error, not a silently ignored setting), or any invalid
            value.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"device profile must be a mapping, got {type(d).__name__}")
        _check_keys(
            d,
            required=("name", "server_model", "tiers"),
            allowed=("name", "server_model", "tiers"),
            where="device profile",
        )
        raw_tiers = d["tiers"]
        entries: list[tuple[str, Any]]
        if isinstance(raw_tiers, Mapping):
            entries = [(str(key), value) for key, value in raw_tiers.items()]
        elif isinstance(raw_tiers, Sequence) and not isinstance(raw_tiers, str):
            entries = [(_tier_name_of(value), value) for value in raw_tiers]
        else:
            raise ValueError(f"device profile tiers must be a mapping name -> fields, got {raw_tiers!r}")
        tiers = tuple(_tier_from_mapping(name, value) for name, value in entries)
        return cls(name=str(d["name"]), server_model=d["server_model"], tiers=tiers)

    def to_dict(self) -> dict[str, Any]:
        """The inverse of :meth:`from_dict`: a plain, YAML-ready mapping."""
        return {
            "name": self.name,
            "server_model": self.server_model,
            "tiers": {
                tier.name: {key: value for key, value in asdict(tier).items() if key != "name"} for tier in self.tiers
            },
        }


def tier_counts(profile: DeviceProfile, num_clients: int) -> dict[str, int]:
    """How many clients each tier gets, by largest-remainder (Hamilton) rounding of the shares.

    Every tier first gets ``floor(share * num_clients)`` clients; the seats left go to the largest fractional
    parts (ties to the tier declared first). Then, if there are at least as many clients as tiers with a
    positive share, every such tier that got none takes one client from the tier most above its exact quota,
    so no declared device class silently disappears from a small federation. Tiers with share 0 get no
    clients.

    Parameters
    ----------
    profile : DeviceProfile
        The tiers and their shares.
    num_clients : int
        Federation size, >= 1.

    Returns
    -------
    dict[str, int]
        Tier name -> number of clients, in tier order; the values sum to ``num_clients``.
    """
    n = _positive_int(num_clients, "num_clients")
    total = math.fsum(tier.share for tier in profile.tiers)
    # Rounding away float noise (0.29 * 100 = 28.999999999999996) keeps exact quotas exact and ties ties.
    quotas = [round(tier.share / total * n, 9) for tier in profile.tiers]
    counts = [math.floor(quota) for quota in quotas]
    positive = [i for i, tier in enumerate(profile.tiers) if tier.share > 0]
    by_remainder = sorted(positive, key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                # A donor with >= 2 clients exists: n clients sit in fewer than len(positive) tiers.
                donor = max((j for j in positive if counts[j] >= 2), key=lambda j: (counts[j] - quotas[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return {tier.name: count for tier, count in zip(profile.tiers, counts, strict=True)}


def assign_tiers(profile: DeviceProfile, num_clients: int, seed: int) -> list[DeviceTier]:
    """The device tier of each client id ``0 .. num_clients - 1``.

    Counts follow :func:`tier_counts`; which client gets which tier is a permutation drawn from
    ``np.random.default_rng(seed)``, so tiers are not correlated with the partitioner's client order.

    Parameters
    ----------
    profile : DeviceProfile
        The tiers and their shares.
    num_clients : int
        Federation size, >= 1.
    seed : int
        Seed of the shuffle; the same seed gives the same assignment.

    Returns
    -------
    list[DeviceTier]
        ``num_clients`` tiers; entry ``i`` is client ``i``'s tier.
    """
    counts = tier_counts(profile, num_clients)
    ordered = [tier for tier in profile.tiers for _ in range(counts[tier.name])]
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order]


def simulated_seconds(
    tier: DeviceTier,
    num_samples: int,
    epochs: int,
    payload_bytes: int,
    *,
    reference_samples_per_second: float = REFERENCE_SAMPLES_PER_SECOND,
) -> float | None:
    """Simulated wall-clock time of one client's round: training plus moving its messages.

    ``seconds = num_samples * epochs / (compute_speed * reference_samples_per_second) + 8 * payload_bytes /
    (bandwidth_mbps * 1e6)``. Such a model ignores latency and contention on purpose: it is there to compare
    methods by how much work and traffic they ask of slow devices, not to predict real time.

    Parameters
    ----------
    tier : DeviceTier
        Supplies ``compute_speed`` and ``bandwidth_mbps``.
    num_samples : int
        Samples per epoch, >= 0.
    epochs : int
        Passes over those samples, >= 0.
    payload_bytes : int
        Bytes sent and received in the round, >= 0.
    reference_samples_per_second : float (default: REFERENCE_SAMPLES_PER_SECOND)
        Throughput of a ``compute_speed=1.0`` device.

    Returns
    -------
    float | None
        Seconds, or ``None`` when the tier lacks the speed needed for work that is not zero (no compute speed
        while there are samples to train, or no bandwidth while there are bytes to move).
    """
    for value, what in ((num_samples, "num_samples"), (epochs, "epochs"), (payload_bytes, "payload_bytes")):
        if _real(value, what) < 0:
            raise ValueError(f"{what} must be >= 0, got {value!r}")
    if _real(reference_samples_per_second, "reference_samples_per_second") <= 0:
        raise ValueError(f"reference_samples_per_second must be > 0, got {reference_samples_per_second!r}")
    seconds = 0.0
    work = num_samples * epochs
    if work > 0:
        if tier.compute_speed is None:
            return None
        seconds += work / (tier.compute_speed * reference_samples_per_second)
    if payload_bytes > 0:
        if tier.bandwidth_mbps is None:
            return None
        seconds += 8.0 * payload_bytes / (tier.bandwidth_mbps * 1e6)
    return seconds


def _tier_name_of(value: Any) -> str:
    if not isinstance(value, Mapping) or "name" not in value:
        raise ValueError(f"a tier given in a list needs a 'name' key, got {value!r}")
    return str(value["name"])


def _tier_from_mapping(name: str, value: Any) -> DeviceTier:
    where = f"tier {name!r}"
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping of fields, got {value!r}")
    _check_keys(value, required=("model", "share"), allowed=_TIER_KEYS, where=where)
    if "name" in value and str(value["name"]) != name:
        raise ValueError(f"{where}: its 'name' field says {value['name']!r}")
    return DeviceTier(**{**dict(value), "name": name})


def _check_keys(d: Mapping[str, Any], required: Sequence[str], allowed: Sequence[str], where: str) -> None:
    missing = [key for key in required if key not in d]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(map(repr, missing))}")
    unknown = [str(key) for key in d if key not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {', '.join(allowed)}")


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(value: Any, what: str) -> int:
    # Accept integral floats (1.0 from a YAML that wrote "1.0") but not 1.5 or True.
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value).is_integer():
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value!r}")
    return int(float(value))
