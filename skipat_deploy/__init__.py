"""skipat-deploy: export, quantize, compile and profile ViT / SkipAt models for Snapdragon NPUs."""

__version__ = "0.1.0"
