"""Model adapters. Importing this package does not import TensorFlow."""

from .base import FitOutcome, ModelAdapter, as_adapter, is_keras_model
from .numpy_model import NumpyModel

__all__ = ["ModelAdapter", "FitOutcome", "NumpyModel", "as_adapter", "is_keras_model"]
