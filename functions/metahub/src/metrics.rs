//! `serve --metrics-listen ADDR`: the Prometheus exposition of the router's metrics, on its own address so that it
//! is never reachable through the registry's listener (or CloudFront). The exporter renders; axum serves.

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::time::Duration;

/// Seconds: upstream requests and answers range from a cache hit (sub-millisecond) to an upstream timeout.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the Prometheus recorder as the process's metrics recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Serves `GET /metrics` on `listen` until the process ends.
pub async fn serve(listen: SocketAddr, handle: PrometheusHandle, limits: crate::listen::Limits) -> anyhow::Result<()> {
    let listener = crate::listen::bind(listen, "--metrics-listen").await?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Drains histogram samples into their buckets so that memory stays bounded between scrapes.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let routes = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
        }),
    );
    tracing::info!(%listen, "metrics served at /metrics");
    tokio::spawn(async move {
        if let Err(e) = crate::listen::serve(listener, routes, limits, "metrics", std::future::pending()).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}
