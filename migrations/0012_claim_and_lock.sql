-- Steps 2-4 of an ingest attempt in one round trip (issue #15, docs/design.md, "Steps 2-4 in
-- one round trip"). The same statements, in the same order, as the separate ones they replace:
--   step 2: claim the append ids (the ledger rows, `pending`), in append-id order;
--   step 3: claim the event ids of the appends claimed now, in event-id order, then arrival;
--   step 4: lock the stream index rows, in the sorted order the caller gives, inserting
--           placeholders for streams that do not exist yet.
-- Step 4 runs here only when steps 2 and 3 claimed everything: then every append reaches the
-- stream index and `lock_streams` (all their streams and subjects, sorted, distinct) is exactly
-- what the attempt would lock. Otherwise it returns after step 3, and the attempt answers the
-- appends decided earlier and the duplicate event ids and locks what is left with its own
-- statements, as before.
--
-- Each statement of a plpgsql function takes its own snapshot under READ COMMITTED, and an
-- `ON CONFLICT DO NOTHING` insert waits for an in-flight holder of the key, exactly as the
-- statements sent one by one did.
--
-- Returned rows: 'a' an append id claimed now (id); 'e' an event id claimed now (id, owner: its
-- append); 's' a locked stream (stream_id, version, deleted_through, tombstoned).
CREATE FUNCTION esk_claim_and_lock(
    attempt         UUID,
    append_ids      UUID[],
    append_streams  TEXT[],
    fingerprints    UUID[],
    event_counts    INT[],
    event_ids       UUID[],
    event_appends   UUID[],
    lock_streams    TEXT[],
    placeholder     BIGINT
) RETURNS TABLE (
    kind            "char",
    id              UUID,
    owner           UUID,
    stream_id       TEXT,
    version         BIGINT,
    deleted_through BIGINT,
    tombstoned      BOOLEAN
)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    claimed_appends UUID[];
    all_claimed     BOOLEAN;
    claimed_events  INT;
BEGIN
    -- Step 2.
    WITH claimed AS (
        INSERT INTO append_ledger AS l (append_id, attempt_id, stream_id, fingerprint,
                                        event_count, status)
        SELECT a, attempt, s, f, c, 'pending'
        FROM unnest(append_ids, append_streams, fingerprints, event_counts) AS t(a, s, f, c)
        ORDER BY a
        ON CONFLICT (append_id) DO NOTHING
        RETURNING l.append_id
    )
    SELECT coalesce(array_agg(claimed.append_id), '{}') INTO claimed_appends FROM claimed;
    all_claimed := cardinality(claimed_appends) = cardinality(append_ids);
    RETURN QUERY SELECT 'a'::"char", c, NULL::UUID, NULL::TEXT, NULL::BIGINT, NULL::BIGINT,
                        NULL::BOOLEAN
                 FROM unnest(claimed_appends) AS c;

    -- Step 3, for the appends claimed now.
    RETURN QUERY
    WITH claimed AS (
        INSERT INTO event_claims AS ec (event_id, append_id)
        SELECT e, a
        FROM unnest(event_ids, event_appends) WITH ORDINALITY AS t(e, a, arrival)
        WHERE all_claimed OR a = ANY (claimed_appends)
        ORDER BY e, arrival
        ON CONFLICT (event_id) DO NOTHING
        RETURNING ec.event_id, ec.append_id
    )
    SELECT 'e'::"char", claimed.event_id, claimed.append_id, NULL::TEXT, NULL::BIGINT,
           NULL::BIGINT, NULL::BOOLEAN
    FROM claimed;
    GET DIAGNOSTICS claimed_events = ROW_COUNT;

    -- Step 4, when nothing is left to answer from the ledger or the claims.
    IF all_claimed AND claimed_events = cardinality(event_ids) THEN
        RETURN QUERY
        INSERT INTO streams AS st (stream_id, version)
        SELECT s, placeholder FROM unnest(lock_streams) AS t(s) ORDER BY s
        ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = st.version
        RETURNING 's'::"char", NULL::UUID, NULL::UUID, st.stream_id, st.version,
                  st.deleted_through, st.tombstoned;
    END IF;
END;
$$;
