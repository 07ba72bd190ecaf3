"""Analyzers: estimators and measurements fitted on activations (no model inside)."""
