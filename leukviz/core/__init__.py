"""The ground floor, torch-free: the errors every layer raises, the run folder's file names (filenames), atomic
writes and tolerant readers (storage), and the typed training events."""

__all__ = ["errors", "events", "filenames", "paths", "storage"]
