"""Tasks: a dataset, a model family and the recipe that trains it. A task name is all a run needs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import UnlearnkitError


@dataclass(frozen=True)
class Recipe:
    """How one model is trained from scratch (originals and oracles alike).

    SGD with Nesterov momentum and a linear decay to zero, or Adam; `weight_decay` is the L2 coefficient
    λ of the objective CE + λ/2·‖θ‖² (PyTorch's coupled weight decay). `grad_penalty` α > 0 adds α·‖∇_θ CE‖₂,
    the norm of each minibatch loss's gradient over all parameters (IAU's gradient restriction, Liu et al.
    2025; trained by double backpropagation through torch.func). No task's default recipe has one.
    """

    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "linear"
    grad_penalty: float = 0.0

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise UnlearnkitError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("linear", "constant"):
            raise UnlearnkitError(f"schedule must be 'linear' or 'constant', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UnlearnkitError("epochs, batch_size and lr must be positive")
        if not self.grad_penalty >= 0:
            raise UnlearnkitError(f"grad_penalty must be >= 0, got {self.grad_penalty!r}")


OBJECTIVES = ("cross-entropy", "bpr")


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    model: str
    recipe: Recipe
    model_kwargs: dict = field(default_factory=dict)
    train_size: int | None = None  # default subset of the training set; None keeps all of it
    description: str = ""
    # what the zoo trains (zoo.task_loss) and which methods apply (runs.method_registry): "cross-entropy"
    # for classifiers; "bpr" for a recommender on interaction rows (data.interactions, methods/rec/)
    objective: str = "cross-entropy"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UnlearnkitError(f"task {self.name}: objective must be one of {', '.join(OBJECTIVES)}, "
                                  f"got {self.objective!r}")

    def describe(self) -> dict:
        """What names the task in cache keys. The default objective and a recipe without a gradient penalty
        are described without their fields, as they were before the fields existed: the classifier tasks'
        cached arms keep their keys."""
        out = asdict(self)
        if out["objective"] == "cross-entropy":
            del out["objective"]
        if not self.recipe.grad_penalty:
            del out["recipe"]["grad_penalty"]
        return out


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("fashion-mnist-mlp", "fashion-mnist", "mlp", Recipe(epochs=15), {"width": 256, "depth": 2},
         train_size=10000, description="Fashion-MNIST, 10k-example subset, 2×256 ReLU MLP (default task)"),
    Task("fashion-mnist-cnn", "fashion-mnist", "cnn", Recipe(epochs=10), {"channels": 16},
         train_size=10000, description="Fashion-MNIST, 10k-example subset, two-block CNN"),
    Task("mnist1d-mlp", "mnist1d", "mlp", Recipe(epochs=30, lr=0.05), {"width": 256, "depth": 2},
         description="MNIST-1D (8000 generated train signals), 2×256 ReLU MLP"),
    Task("digits-mlp", "digits", "mlp", Recipe(epochs=30, batch_size=64, lr=0.05), {"width": 128, "depth": 1},
         description="scikit-learn digits, 1×128 ReLU MLP (seconds to train: quick runs and tests)"),
    Task("digits-logreg", "digits", "logreg", Recipe(epochs=40, batch_size=64, lr=0.1, weight_decay=1e-3),
         description="scikit-learn digits, L2-regularised logistic regression (convex)"),
    # EasyDUB's CIFAR-10 recipe (data-unlearning-bench, unlearning/training/train.py train_cifar10): 24 epochs,
    # batch 256, SGD lr 0.4 momentum 0.9 weight decay 5e-4, no augmentation, no label smoothing, all 50k images.
    # What our Recipe cannot say: EasyDUB's lr rises linearly from 0 to 0.4 over 5 epochs, then falls to 0 at
    # epoch 24 (ours falls linearly from 0.4 from the first step); its momentum is heavy-ball (ours Nesterov);
    # it trains under fp16 autocast and predicts with BatchNorm running averages (ours: --precision, and
    # calibration-set statistics, see models/resnet9.py).
    Task("cifar10-resnet9", "cifar10", "resnet9",
         Recipe(epochs=24, batch_size=256, lr=0.4, momentum=0.9, weight_decay=5e-4, schedule="linear"),
         {"widths": (64, 128, 256, 128), "calibration": "cifar10"},
         description="CIFAR-10 (50k train images, no augmentation), EasyDUB's ResNet-9; needs the binary "
                     "files (--data-dir)"),
    # Recommendation (the MMRecUn setting, Sinha et al. 2024): BPR-trained matrix factorisation with projected
    # item features on generated interactions; Adam, whose coupled weight decay is BPR's λ‖Θ‖².
    Task("rec-mf", "rec-synth", "mf", Recipe(epochs=40, batch_size=256, optimizer="adam", lr=0.01,
                                             weight_decay=1e-4), {"dim": 32}, objective="bpr",
         description="recommendation: rec-synth (300 users, 400 items, ~6k training interactions with item "
                     "features), VBPR-style matrix factorisation trained with BPR"),
    Task("rec-mf-tiny", "rec-synth-tiny", "mf", Recipe(epochs=40, batch_size=64, optimizer="adam", lr=0.01,
                                                       weight_decay=1e-4), {"dim": 16}, objective="bpr",
         description="recommendation: rec-synth-tiny (60 users, 80 items), matrix factorisation (seconds: tests)"),
]}


def get_task(name: str) -> Task:
    """The classifier task `name` (`runs.classifier_task` adds the hint for a language-model task's name)."""
    if name not in TASKS:
        raise UnlearnkitError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
