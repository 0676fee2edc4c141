"""The model zoo: vectorised, cached training of ensembles (originals, oracles, retrained models)."""
from .cache import ZooCache, stable_hash, tensor_digest
from .train import (
                    ORACLE_SEEDS,
                    ORIGINAL_SEEDS,
                    RETRAIN_SEEDS,
                    Arm,
                    arm_key,
                    arm_seeds,
                    cross_entropy_loss,
                    init_models,
                    recipe_optim,
                    task_loss,
                    template,
                    train_models,
                    zoo_family,
                    zoo_key,
)

__all__ = [
                    "ORACLE_SEEDS",
                    "ORIGINAL_SEEDS",
                    "RETRAIN_SEEDS",
                    "Arm",
                    "ZooCache",
                    "arm_seeds",
                    "cross_entropy_loss",
                    "init_models",
                    "recipe_optim",
                    "stable_hash",
                    "template",
                    "task_loss",
                    "tensor_digest",
                    "arm_key",
                    "train_models",
                    "zoo_family",
                    "zoo_key",
]
