"""Data capture: what the service predicted, kept in a database beside the model store, and the
true labels applications send back for it.

The request path hands one :class:`~serving.capture.records.Captured` per request to the
:class:`~serving.capture.writer.CaptureWriter` (an append, never a wait); its thread expands
records into rows and writes them in batches through :class:`~serving.capture.store.CaptureStore`
(SQLAlchemy Core: a SQLite file by default, PostgreSQL for several processes or machines). The
tables and their versioned layout are in :mod:`serving.capture.schema`.
"""
