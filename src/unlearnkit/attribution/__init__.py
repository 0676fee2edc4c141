"""Data attribution: datamodels fitted on subset-trained models (and a gradient-based alternative), their
LDS, and the files they are saved in."""
from .datamodels import Attribution, LinearDatamodels, fit_datamodels, lds
from .store import (
           DatamodelReport,
           compute_datamodels,
           load_datamodels,
           save_datamodels,
           trak_lds,
)
from .subsets import SubsetRuns, train_subset_models

__all__ = [
           "Attribution",
           "DatamodelReport",
           "LinearDatamodels",
           "SubsetRuns",
           "compute_datamodels",
           "fit_datamodels",
           "lds",
           "load_datamodels",
           "save_datamodels",
           "train_subset_models",
           "trak_lds",
]
