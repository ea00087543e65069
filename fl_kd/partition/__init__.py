"""Partitioners: split a dataset's labels among simulated clients (IID, label skew, class
pathology, quantity skew), and a report of what each client ends up holding.
"""

from fl_kd.partition.dispatch import PARTITIONERS, partition
from fl_kd.partition.functional import (
    dirichlet_partition,
    iid_partition,
    pathological_partition,
    quantity_skew_partition,
)
from fl_kd.partition.report import PartitionReport

__all__ = [
    "PARTITIONERS",
    "PartitionReport",
    "dirichlet_partition",
    "iid_partition",
    "partition",
    "pathological_partition",
    "quantity_skew_partition",
]
