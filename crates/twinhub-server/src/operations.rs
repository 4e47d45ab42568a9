//! The operations listener (`serve --metrics-bind`), off the public ports: `/metrics` in Prometheus'
//! text format and `/healthz`. What it reports so far is the hub's size; in a cluster, how far the
//! node's view is from the cluster's (a node never serves a view it knows may be behind without saying
//! so: in its log, and here); and what message routing dropped, and each custom endpoint's deliveries.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::net::TcpListener;
use twinhub_hub::Hub;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the operations endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(hub);
    if let Err(error) = axum::serve(listener, router).await {
        tracing::error!(%error, "the operations listener stopped");
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge: Gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, gauge);
}

/// A counter read from a total the hub keeps (the registry is built afresh for each scrape).
fn counter(registry: &mut Registry, name: &str, help: &str, total: u64) {
    let counter: Counter = Counter::default();
    counter.inc_by(total);
    registry.register(name, help, counter);
}

/// What routing dropped or could not store, and each custom endpoint's deliveries.
fn routing_metrics(registry: &mut Registry, hub: &Hub) {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Endpoint {
        endpoint: String,
    }
    let routing = hub.routing();
    counter(
        registry,
        "routing_unrouted_messages",
        "Device messages no route took while the fallback route was off (acknowledged and dropped, as on IoT Hub)",
        routing.unrouted(),
    );
    counter(
        registry,
        "routing_hub_messages_lost",
        "The hub's own messages a route took that their endpoint could not store",
        routing.lost(),
    );
    let delivered = Family::<Endpoint, Counter>::default();
    let dropped = Family::<Endpoint, Counter>::default();
    for endpoint in routing.custom_endpoints() {
        let label = Endpoint {
            endpoint: endpoint.spec.name.clone(),
        };
        delivered.get_or_create(&label).inc_by(endpoint.delivered());
        dropped.get_or_create(&label).inc_by(endpoint.dropped());
    }
    registry.register(
        "endpoint_delivered_messages",
        "Messages a custom endpoint (NATS, webhook) took",
        delivered,
    );
    registry.register(
        "endpoint_dropped_messages",
        "Messages that left a custom endpoint's outbox undelivered, past its bound",
        dropped,
    );
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let mut registry = Registry::with_prefix("twinhub");
    let statistics = hub.statistics();
    gauge(
        &mut registry,
        "devices",
        "Devices in the registry",
        statistics.total as u64,
    );
    gauge(
        &mut registry,
        "devices_enabled",
        "Devices in the registry whose status is enabled",
        statistics.enabled as u64,
    );
    if let Some(view) = hub.cluster_view() {
        gauge(
            &mut registry,
            "cluster_applied_commit",
            "The last commit of the cluster's log this node's view includes",
            view.applied_commit,
        );
        gauge(
            &mut registry,
            "cluster_heard_commit",
            "The last commit of the cluster's log this node heard of",
            view.heard_commit,
        );
        gauge(
            &mut registry,
            "cluster_commits_behind",
            "Commits this node heard of and has not applied yet",
            view.heard_commit - view.applied_commit,
        );
        counter(
            &mut registry,
            "cluster_reads_from_unchecked_view",
            "Reads and queries served from this node's view while the store could not say whether it was behind",
            view.reads_from_unchecked_view,
        );
        counter(
            &mut registry,
            "cluster_catch_up_failures",
            "Times this node could not apply other nodes' commits when told of them",
            view.catch_up_failures,
        );
    }
    routing_metrics(&mut registry, &hub);
    let mut text = String::new();
    match encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
