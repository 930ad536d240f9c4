"""The ground floor, torch-free: the errors every layer raises, the run folder's file names (filenames), atomic
writes and tolerant readers (storage), the typed training events, the LEUKVIZ_* paths (paths) and durations in
words (durations)."""

__all__ = ["durations", "errors", "events", "filenames", "paths", "storage"]
