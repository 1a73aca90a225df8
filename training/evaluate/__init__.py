"""Evaluation of frozen user embeddings: probes, baselines, noise robustness, instruction awareness, reports."""
