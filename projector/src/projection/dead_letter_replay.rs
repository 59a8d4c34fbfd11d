//! `dead-letters replay`: a one-shot command that applies a projection's dead letters again,
//! each tried up to `max_attempts` times whatever the failure; those that pass are marked
//! replayed, the others stay.

use esk_model::wire::CanonicalEvent;
use sqlx::PgPool;

use super::Projection;
use crate::dead_letters;
use crate::event::ProjectedEvent;
use crate::handlers::Handler;

impl Projection {
    /// Applies every unreplayed dead letter again; returns (replayed, still failing).
    pub(crate) async fn replay_dead_letters(
        &self,
        pool: &PgPool,
    ) -> Result<(usize, usize), sqlx::Error> {
        let (mut replayed, mut failing) = (0, 0);
        for (id, payload) in dead_letters::unreplayed_payloads(pool, &self.name).await? {
            // An undecodable record stays undecodable: it counts as still failing.
            let outcome =
                match serde_json::from_slice::<CanonicalEvent>(&payload.unwrap_or_default()) {
                    Ok(event) => {
                        let event = ProjectedEvent {
                            event,
                            source: None,
                        };
                        self.replay_dead_letter(pool, &event, id).await
                    }
                    Err(error) => Err(format!("undecodable canonical record: {error}")),
                };
            match outcome {
                Ok(()) => replayed += 1,
                Err(error) => {
                    dead_letters::record_failed_replay(pool, id, &error).await?;
                    failing += 1;
                }
            }
        }
        Ok((replayed, failing))
    }

    /// Applies one dead-lettered event again and marks it replayed: in the same transaction
    /// for SQL handlers, after the delivery for the others. A one-shot command: any failure is
    /// tried `max_attempts` times, then reported.
    async fn replay_dead_letter(
        &self,
        pool: &PgPool,
        event: &ProjectedEvent,
        dead_letter_id: i64,
    ) -> Result<(), String> {
        let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
        match &self.handler {
            Handler::Sql(handler) => handler
                .apply(&mut tx, &self.name, std::slice::from_ref(event))
                .await
                .map_err(|e| e.to_string())?,
            _ => {
                let mut backoff = esk_runtime::retry::until_stopped(self.retry);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match self.handler.deliver(std::slice::from_ref(event)).await {
                        Ok(()) => break,
                        Err(error) if attempt >= self.max_attempts => return Err(error.to_string()),
                        Err(error) => {
                            tracing::warn!(projection = %self.name, event_id = %event.event.event_id,
                                %error, attempt, "replay failed; retrying");
                            tokio::time::sleep(
                                backoff
                                    .next()
                                    .unwrap_or(esk_runtime::retry::MAX_RETRY_DELAY),
                            )
                            .await;
                        }
                    }
                }
            }
        }
        dead_letters::mark_replayed(&mut tx, dead_letter_id)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }
}
