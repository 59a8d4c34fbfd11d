//! Opt-in (`--features testcontainers`): Postgres in a container, for users with a Docker
//! daemon. Not run on the project's CI machines, which cannot pull images.

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::ContainerAsync;

/// A running Postgres container and its URL; the container stops when this is dropped.
#[derive(Debug)]
pub struct PostgresContainer {
    /// Keeps the container alive.
    pub container: ContainerAsync<Postgres>,
    /// `postgres://postgres:postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

/// Starts Postgres; point `ESK_TEST_DATABASE_URL` at `url` to run the suite against it.
pub async fn start_postgres() -> anyhow::Result<PostgresContainer> {
    let container = Postgres::default().start().await?;
    let port = container.get_host_port_ipv4(5432).await?;
    Ok(PostgresContainer {
        container,
        url: format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
    })
}
