"""Benchmarks: ``llm-course bench kernels`` (stage 1); shared pieces in ``common.py``."""
