"""Analyzers: scikit-learn estimators fitted on activations (no model inside).

Each subclasses ``sklearn.base.BaseEstimator`` (plus the classifier / regressor / transformer mixin
that fits), so ``clone``, ``Pipeline``, ``GridSearchCV`` and ``cross_val_score`` work; ``predict``,
``transform`` and ``score`` return numpy arrays; fitted state ends in ``_``.
"""
from sklearn.exceptions import NotFittedError

from ..errors import InterpError


class NotFitted(InterpError, NotFittedError):
    """Using an estimator before ``fit``: an InterpError that scikit-learn also recognizes as ``NotFittedError``."""
