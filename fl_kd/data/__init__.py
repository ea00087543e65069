"""Datasets and the transfer set: everything upstream of partitioning.

``load_dataset(name)`` returns a :class:`DatasetSplits` for images and tabular data alike;
``split_transfer_set`` carves the shared data on which knowledge moves between server and clients;
``personalised_test_indices`` builds a test subset that follows one client's label distribution.
"""

from fl_kd.data.registry import available_datasets, load_dataset
from fl_kd.data.splits import DatasetError, DatasetNotAvailableError, DatasetSplits
from fl_kd.data.transfer import personalised_test_indices, split_transfer_set

__all__ = [
    "DatasetError",
    "DatasetNotAvailableError",
    "DatasetSplits",
    "available_datasets",
    "load_dataset",
    "personalised_test_indices",
    "split_transfer_set",
]
