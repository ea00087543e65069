"""Size and cost of the models in a device profile: parameters and FLOPs per forward pass of one sample.

FLOPs here are ``2 x`` the multiply-accumulates (MACs) of ``nn.Conv2d`` and ``nn.Linear`` layers: a multiply
and an add count as two operations. Many papers (the ResNet paper's "FLOPs" included, He et al., 2016) report
MACs, which are half our figure. Bias additions, normalisation, activations and pooling are left out: they are
a few percent of the total for these models, and tools disagree on how to count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fl_kd.models.profiles import DeviceProfile
from fl_kd.models.zoo import build_model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs (``2 x`` MACs) of ``Conv2d`` and ``Linear`` layers in one forward pass of a single sample.

    A forward hook on every such layer reads the actual output shape, so strides, padding and pooling between
    layers are accounted for without re-deriving them. A convolution costs ``out_channels * H_out * W_out *
    (in_channels / groups) * kH * kW`` MACs (padded positions included), a linear layer ``out_numel *
    in_features``.

    Parameters
    ----------
    model : nn.Module
        Run once in eval mode on zeros ``(1, *input_shape)``, without gradients; its training mode is
        restored.
    input_shape : Sequence[int]
        One sample's shape, e.g. ``(1, 8, 8)``.

    Returns
    -------
    int
        FLOPs per sample.
    """
    macs = 0

    def conv_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        assert isinstance(module, nn.Conv2d)
        kernel_h, kernel_w = module.kernel_size
        macs += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w

    def linear_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        assert isinstance(module, nn.Linear)
        macs += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 2 * macs


@dataclass(frozen=True)
class ModelReportRow:
    """One line of the model report: the server or one client tier.

    Attributes
    ----------
    role : str
        ``"server"`` or ``"client"``.
    tier : str | None
        Tier name for clients, ``None`` for the server.
    model : str
        Registered model name.
    share : float | None
        Fraction of clients in the tier (``None`` for the server).
    parameters : int
        Scalar parameters.
    mflops : float
        Millions of FLOPs (``2 x`` MACs) per sample, forward pass.
    local_epochs : int | None
        Tier's local epochs (``None`` for the server).
    batch_size : int | None
        Tier's batch size (``None`` for the server).
    """

    role: str
    tier: str | None
    model: str
    share: float | None
    parameters: int
    mflops: float
    local_epochs: int | None
    batch_size: int | None


def model_report(profile: DeviceProfile, input_shape: Sequence[int], num_classes: int) -> list[ModelReportRow]:
    """Parameters and MFLOPs of the server model (first row) and of each tier's model (one row per tier).

    Models are built with a fixed private seed, so making a report never disturbs the caller's random state.
    """
    cache: dict[str, tuple[int, float]] = {}

    def size(name: str) -> tuple[int, float]:
        if name not in cache:
            model = build_model(name, input_shape, num_classes, seed=0)
            cache[name] = (count_parameters(model), count_flops(model, input_shape) / 1e6)
        return cache[name]

    params, mflops = size(profile.server_model)
    rows = [ModelReportRow("server", None, profile.server_model, None, params, mflops, None, None)]
    for tier in profile.tiers:
        params, mflops = size(tier.model)
        rows.append(
            ModelReportRow(
                "client",
                tier.name,
                tier.model,
                tier.share,
                params,
                mflops,
                tier.local_epochs,
                tier.batch_size,
            )
        )
    return rows


def server_to_client_ratio(rows: Sequence[ModelReportRow]) -> float:
    """Server parameters divided by those of the largest client tier's model."""
    server = [row.parameters for row in rows if row.role == "server"]
    clients = [row.parameters for row in rows if row.role == "client"]
    if len(server) != 1 or not clients:
        raise ValueError("a model report needs exactly one server row and at least one client row")
    return server[0] / max(clients)


def format_model_report(rows: Sequence[ModelReportRow]) -> str:
    """The report as a plain-text table, plus the server-to-largest-client parameter ratio."""
    header = ("role/tier", "model", "share", "parameters", "MFLOPs", "local epochs", "batch size")
    body = [
        (
            row.role if row.tier is None else f"{row.role}/{row.tier}",
            row.model,
            "-" if row.share is None else f"{row.share:.2f}",
            f"{row.parameters:,}",
            f"{row.mflops:.3f}",
            "-" if row.local_epochs is None else str(row.local_epochs),
            "-" if row.batch_size is None else str(row.batch_size),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def render(line: Sequence[str]) -> str:
        # Text columns left-aligned, numbers right-aligned.
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [render(header), "  ".join("-" * w for w in widths)] + [render(line) for line in body]
    lines.append(f"server / largest client parameters: {server_to_client_ratio(rows):.1f}x")
    return "\n".join(lines)
