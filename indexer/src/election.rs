//! Elections by session advisory lock, for the one index committer (rule 4 of the multi-stream
//! design) and the one publisher: the lock lives as long as the connection that took it, so a
//! process that dies or loses that connection loses the lock, and a standby that polls takes it.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// Advisory lock key of the index committer's election.
pub(crate) const COMMITTER_LOCK: i64 = 0x0065_736b_5f69_6478; // "esk_idx"
/// Advisory lock key of the publisher's election.
pub(crate) const PUBLISHER_LOCK: i64 = 0x0065_736b_5f70_7562; // "esk_pub"

/// A held election: the connection that holds the session lock.
#[derive(Debug)]
pub(crate) struct Leadership {
    conn: PoolConnection<Postgres>,
}

impl Leadership {
    /// Takes the lock `key` if no other session holds it; `None` when another does, or when
    /// Postgres cannot be asked (a standby polls again).
    pub(crate) async fn try_acquire(pool: &PgPool, key: i64) -> Option<Leadership> {
        let mut conn = pool.acquire().await.ok()?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .ok()?;
        got.then_some(Leadership { conn })
    }

    /// Checks that the lock's connection is still alive (the lock lives as long as it does).
    pub(crate) async fn confirm(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut *self.conn).await?;
        Ok(())
    }

    /// Steps down: closing the connection releases the lock (a pooled connection would keep
    /// it).
    pub(crate) async fn release(self) {
        let _ = self.conn.close().await;
    }
}
