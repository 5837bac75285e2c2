"""tune_hw: deep-learning hyperparameter studies as distributed Ray Tune searches."""

__version__ = "0.1.0"
