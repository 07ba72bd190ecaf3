"""Benchmarks: scripts that print measured numbers (``interp bench capture | generate | refusal | patching``)."""
