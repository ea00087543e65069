"""Model zoo, device profiles and model reports.

Edge clients train small architectures chosen by their device tier; the server trains a much larger one. Only
logits move between them, so architectures differ freely and are looked up by name in one registry.
"""

from fl_kd.models.presets import DEVICE_PROFILES
from fl_kd.models.profiles import (
    REFERENCE_SAMPLES_PER_SECOND,
    SHARE_TOLERANCE,
    DeviceProfile,
    DeviceTier,
    assign_tiers,
    simulated_seconds,
    tier_counts,
)
from fl_kd.models.report import (
    ModelReportRow,
    count_flops,
    count_parameters,
    format_model_report,
    model_report,
    server_to_client_ratio,
)
from fl_kd.models.zoo import (
    ModelSpec,
    available_models,
    build_model,
    check_input_shape,
    get_model_spec,
    register_model,
)

__all__ = [
    "DEVICE_PROFILES",
    "REFERENCE_SAMPLES_PER_SECOND",
    "SHARE_TOLERANCE",
    "DeviceProfile",
    "DeviceTier",
    "ModelReportRow",
    "ModelSpec",
    "assign_tiers",
    "available_models",
    "build_model",
    "check_input_shape",
    "count_flops",
    "count_parameters",
    "format_model_report",
    "get_model_spec",
    "model_report",
    "register_model",
    "server_to_client_ratio",
    "simulated_seconds",
    "tier_counts",
]
