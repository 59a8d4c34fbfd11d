//! How the claim statements of steps 2 and 3 treat an id another append already holds.
//!
//! Almost every attempt claims only new ids: a plain `INSERT` is then enough, and it costs
//! Postgres about half of an `INSERT … ON CONFLICT DO NOTHING` (a speculative insertion per row;
//! measured in docs/design.md, "Claims without ON CONFLICT"). When an id is held (a retry, a
//! redelivery, a duplicate event id), the plain statement fails with a unique violation, the
//! attempt's transaction rolls back having written nothing, and the attempt redoes steps 1–3
//! skipping held ids, which is how every attempt claimed before.

/// What a claim statement does on an id that is already held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnHeld {
    /// Plain `INSERT`: a held id fails the whole statement ([`is_held`] tells that failure).
    Fail,
    /// `ON CONFLICT DO NOTHING`: a held id is left out of what the statement returns.
    Skip,
}

/// Whether `error` is a claim statement run with [`OnHeld::Fail`] meeting a held id.
pub(crate) fn is_held(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(esk_runtime::db::UNIQUE_VIOLATION))
}
