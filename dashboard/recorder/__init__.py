"""The flight recorder: every sample kept on disk in one SQLite file (:mod:`.store`), written
by a thread of its own (:mod:`.writer`), replayed later in the same page (:mod:`.replay`),
followed from outside over a dashboard's event stream (:mod:`.follow`) and exported as JSON
lines (:mod:`.export`)."""

from dashboard.recorder.store import FORMAT_VERSION, RecordingError, RecordingStore

__all__ = ["FORMAT_VERSION", "RecordingError", "RecordingStore"]
