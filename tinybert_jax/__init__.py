"""Distillation of BERT encoders in JAX/Flax. Importing the package has no side effects."""
