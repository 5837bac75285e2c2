"""A non-neural baseline model: gradient-boosted trees on raw inputs.

`model: {name: hist_gradient_boosting}` fits scikit-learn's HistGradientBoostingClassifier on
the flattened training inputs. Boosting rounds play the role of epochs: epoch e grows the
ensemble to e/epochs of `max_iter` rounds (warm start, so each epoch really trains); the
training loop (`training.run_tree_trial`) reports every epoch as a neural trial does, so trees
line up in trials/epochs.parquet.
"""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from tune_hw import data
from tune_hw.errors import UserError
from tune_hw.model_registry import register_model

TREE_MODELS = frozenset({"hist_gradient_boosting"})
ROWS_PER_THREAD = 5_000  # below this many training rows per thread, fitting is single-threaded


class TreeBaseline:
    """A HistGradientBoostingClassifier and the number of classes of its task."""

    def __init__(self, num_classes: int, max_iter: int, learning_rate: float,
                 max_leaf_nodes: int, min_samples_leaf: int, l2_regularization: float):
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.num_classes, self.max_iter, self.learning_rate = num_classes, max_iter, learning_rate
        # no internal early stopping: rounds follow the epochs, and validation stays unseen
        self.classifier = HistGradientBoostingClassifier(
            max_iter=1, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
            min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization,
            early_stopping=False, warm_start=True)

    def rounds_at(self, epoch: int, epochs: int) -> int:
        """Boosting rounds the ensemble has after `epoch` of `epochs`."""
        return max(1, round(self.max_iter * epoch / epochs))

    def fit_to(self, rounds: int, split: data.Split, seed: int) -> None:
        self.classifier.set_params(max_iter=rounds, random_state=seed)
        # OpenMP threads follow the trial's CPUs, like torch's (set by the trainable), but
        # small data gets one: thread barriers cost more than the work (30x on a busy host)
        threads = max(1, min(torch.get_num_threads(), len(split) // ROWS_PER_THREAD))
        with threadpool_limits(limits=threads, user_api="openmp"):
            self.classifier.fit(_features(split), split.y.cpu().numpy())

    def num_nodes(self) -> int:
        """Tree nodes in the ensemble, the trees' counterpart of a parameter count."""
        predictors = getattr(self.classifier, "_predictors", [])  # sklearn keeps no public count
        return int(sum(len(tree.nodes) for stage in predictors for tree in stage))

    def evaluate(self, split: data.Split) -> tuple[float, float]:
        """Mean cross-entropy (log loss) and accuracy, over all classes of the task."""
        proba = np.zeros((len(split), self.num_classes))
        proba[:, self.classifier.classes_] = self.classifier.predict_proba(_features(split))
        y = split.y.cpu().numpy()
        picked = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
        return float(-np.log(picked).mean()), float((proba.argmax(1) == y).mean())


def _features(split: data.Split) -> np.ndarray:
    return split.x.flatten(1).cpu().numpy()


@register_model("hist_gradient_boosting")
def build_hist_gradient_boosting(in_shape: tuple[int, ...], num_classes: int,
                                 max_iter: int = 100, learning_rate: float = 0.1,
                                 max_leaf_nodes: int = 31, min_samples_leaf: int = 20,
                                 l2_regularization: float = 0.0) -> TreeBaseline:
    """Gradient-boosted trees on raw (flattened) inputs; `max_iter` rounds over all epochs."""
    if max_iter < 1 or learning_rate <= 0 or max_leaf_nodes < 2 or min_samples_leaf < 1:
        raise UserError("hist_gradient_boosting needs max_iter >= 1, learning_rate > 0, "
                        f"max_leaf_nodes >= 2 and min_samples_leaf >= 1; got max_iter={max_iter}, "
                        f"learning_rate={learning_rate}, max_leaf_nodes={max_leaf_nodes}, "
                        f"min_samples_leaf={min_samples_leaf}")
    return TreeBaseline(num_classes, max_iter, learning_rate, max_leaf_nodes, min_samples_leaf,
                        l2_regularization)
