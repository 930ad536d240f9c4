"""The speed and precision benchmarks (`python -m leukviz bench`): outside the product's layers; nothing but
the CLI imports them."""

__all__ = ["bench", "scale"]
