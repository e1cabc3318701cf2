"""Proof that a model computes what its checkpoint means: the NumPy reference, verify, compare."""
