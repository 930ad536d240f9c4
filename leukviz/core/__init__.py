"""The ground floor, torch-free: the errors every layer raises, the run folder's file names (layout), atomic
writes and tolerant readers (storage), and the typed training events."""

__all__ = ["errors", "events", "layout", "storage"]
