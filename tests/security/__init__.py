"""Adversarial tests of the code-execution sandbox (model-written code trying to escape)."""
