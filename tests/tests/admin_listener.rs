//! The admin listener: `/metrics`, `/health` and `/ready` are served on their own address, never
//! on ingest's API port, which serves only the API and `/openapi.json`.

use esk_tests::ingest;
use esk_tests::TestContext;

const HTTP_ONLY: &[(&str, &str)] = &[("ESK_INGEST_KAFKA_APPENDS", "false")];
const TELEMETRY: [&str; 3] = ["/metrics", "/health", "/ready"];

#[tokio::test]
async fn ingest_serves_telemetry_on_the_admin_port_only() -> anyhow::Result<()> {
    let ctx = TestContext::new("admin_listener").await?;
    let process = ingest::spawn(&ctx, HTTP_ONLY).await?;
    assert_ne!(process.http, process.admin, "two listeners");
    let client = reqwest::Client::new();
    for path in TELEMETRY {
        let on_api = client.get(format!("{}{path}", process.http)).send().await?;
        assert_eq!(on_api.status(), 404, "{path} on the API port");
        let on_admin = client
            .get(format!("{}{path}", process.admin))
            .send()
            .await?;
        assert_eq!(on_admin.status(), 200, "{path} on the admin port");
    }
    let metrics = client
        .get(format!("{}/metrics", process.admin))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("esk_"), "Prometheus text: {metrics}");
    // The API itself is not on the admin port.
    let openapi = client
        .get(format!("{}/openapi.json", process.http))
        .send()
        .await?;
    assert_eq!(openapi.status(), 200);
    let openapi_on_admin = client
        .get(format!("{}/openapi.json", process.admin))
        .send()
        .await?;
    assert_eq!(openapi_on_admin.status(), 404);
    let document: serde_json::Value = openapi.json().await?;
    for path in TELEMETRY {
        assert!(
            document["paths"].get(path).is_none(),
            "{path} is not in the API's document"
        );
    }
    Ok(())
}
