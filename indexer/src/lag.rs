//! Indexing lag in records per partition: the partition's high watermark minus the offset
//! stored in Postgres. Tansu reports wrong end offsets for single multi-record batches, so on
//! it this gauge is approximate; Apache Kafka's is exact.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::metrics::IndexerMetrics;

pub(crate) struct LagMonitor {
    pub(crate) pool: PgPool,
    pub(crate) kafka: esk_runtime::kafka::KafkaSettings,
    pub(crate) topic: String,
    pub(crate) metrics: Arc<IndexerMetrics>,
}

impl LagMonitor {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let consumer: BaseConsumer = match esk_runtime::kafka::base_config(&self.kafka)
            .set("group.id", "esk-indexer-lag")
            .create()
        {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "lag monitor disabled");
                return;
            }
        };
        let consumer = Arc::new(consumer);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let stored = match sqlx::query(
                "SELECT partition_id, next_offset FROM indexer_offsets WHERE topic = $1",
            )
            .bind(&self.topic)
            .fetch_all(&self.pool)
            .await
            {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::debug!(%error, "lag monitor cannot read offsets");
                    continue;
                }
            };
            for row in stored {
                let (Ok(partition), Ok(next)) =
                    (row.try_get::<i32, _>(0), row.try_get::<i64, _>(1))
                else {
                    continue;
                };
                let consumer = consumer.clone();
                let topic = self.topic.clone();
                let high = tokio::task::spawn_blocking(move || {
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
                })
                .await;
                if let Ok(Ok((_, high))) = high {
                    self.metrics
                        .lag_records
                        .with_label_values(&[&partition.to_string()])
                        .set((high - next).max(0));
                }
            }
        }
    }
}
