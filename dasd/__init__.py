"""dasd: Direction-Adaptive Self-Distillation (arXiv:2605.22263) — core library."""

__version__ = "0.1.0"
