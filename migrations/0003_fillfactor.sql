-- Room on each page for the updates these tables take, so they stay HOT (heap-only: no new
-- index entries, less WAL). An append's ledger row is inserted as 'pending' and updated with
-- its outcome in the same transaction; at the default fillfactor (100) the page is full by then
-- and 96% of those updates went to another page, with a new entry in both ledger indexes.
-- Applies to pages written from now on; existing pages keep their layout.
ALTER TABLE append_ledger SET (fillfactor = 50);
ALTER TABLE streams SET (fillfactor = 70);
ALTER TABLE projection_stream_summary SET (fillfactor = 70);
