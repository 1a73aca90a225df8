"""InstructUE for Feast: instruction-aware user embeddings from an LLM, served as Feast features.

Importing this package is cheap: torch, transformers and onnxruntime load only when a model is used.
"""

from __future__ import annotations

__version__ = "0.1.0"
