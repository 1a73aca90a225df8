"""Synthetic users for InstructUE: catalogs, the generator and the noise injector.

`generate(out_dir, users=..., seed=...)` writes raw event logs, Feast snapshot tables, labels and
`meta.json`; see `training.synth.generator` for the data model and `training.synth.noise` for noise
injection into feature frames.
"""

from __future__ import annotations

from training.synth.generator import SynthSummary, generate

__all__ = ["SynthSummary", "generate"]
