"""moon-ray: reasoning-aware multimodal product embeddings (MOON2.0 / MOON3.0) on Ray."""

__version__ = "0.1.0"
