"""The speed and precision benchmarks (`python -m leukviz bench`): outside the product's layers; nothing but the
CLI imports them. bench runs them: settings (what to measure), benchdata (the files both paths read), timing (the
plain loop of training/plain.py against leukviz's loop), roofline, latency, memory (with its child process,
memchild), table, precision (fp32 against bf16)."""

__all__ = ["bench", "benchdata", "latency", "memchild", "memory", "precision", "roofline", "scale", "settings",
           "table", "timing"]
