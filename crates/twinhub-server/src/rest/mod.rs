//! The service REST API, as the Node `azure-iothub` and Python `azure-iot-hub` SDKs use it.
//! Ref: shared/protocol/service-rest.md.

mod auth;
mod body;
mod configurations;
mod consumer_groups;
mod device_events;
mod device_messages;
mod error;
mod jobs;
mod methods;
mod modules;
mod registry;
mod routing;
mod send_message;
mod stream;
mod twins;

use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use twinhub_core::policy::SharedAccessPolicy;
use twinhub_hub::Hub;

pub use error::RestError;

/// Largest request body accepted. A bulk request of 100 devices with twins fits well within it.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;

#[derive(Clone)]
pub struct RestState {
    pub(crate) hub: Arc<Hub>,
    pub(crate) auth: Arc<auth::ServiceAuth>,
}

impl RestState {
    pub fn new(hub: Arc<Hub>, hostname: String, policies: Vec<SharedAccessPolicy>) -> Self {
        RestState {
            hub,
            auth: Arc::new(auth::ServiceAuth { hostname, policies }),
        }
    }
}

pub fn router(state: RestState) -> Router {
    Router::new()
        .route("/devices", get(registry::list_devices).post(registry::bulk))
        // Node's Registry.list() asks for `/devices/` with the slash.
        .route("/devices/", get(registry::list_devices).post(registry::bulk))
        .route(
            "/devices/{id}",
            get(registry::get_device)
                .put(registry::put_device)
                .delete(registry::delete_device),
        )
        .route("/statistics/devices", get(registry::registry_statistics))
        .route("/statistics/service", get(registry::service_statistics))
        .route(
            "/twins/{id}",
            get(twins::get_twin).patch(twins::patch_twin).put(twins::replace_twin),
        )
        .route("/devices/query", post(twins::query))
        .route("/configurations", get(configurations::list))
        .route("/configurations/testQueries", post(configurations::test_queries))
        .route(
            "/configurations/{id}",
            get(configurations::get)
                .put(configurations::put)
                .delete(configurations::delete),
        )
        .route(
            "/devices/{id}/applyConfigurationContent",
            post(configurations::apply_content),
        )
        .route("/jobs/v2/query", get(jobs::query))
        .route("/jobs/v2/{id}", get(jobs::get).put(jobs::put))
        .route("/jobs/v2/{id}/cancel", post(jobs::cancel))
        .route("/devices/{id}/modules", get(modules::list))
        .route(
            "/devices/{id}/modules/{module}",
            get(modules::get).put(modules::put).delete(modules::delete),
        )
        .route(
            "/twins/{id}/modules/{module}",
            get(modules::get_twin)
                .patch(modules::patch_twin)
                .put(modules::replace_twin),
        )
        .route("/twins/{id}/methods", post(methods::invoke_on_device))
        .route("/twins/{id}/modules/{module}/methods", post(methods::invoke_on_module))
        .route(
            "/eventHubEndpoints/{endpoint}/ConsumerGroups",
            get(consumer_groups::list),
        )
        .route(
            "/eventHubEndpoints/{endpoint}/ConsumerGroups/{name}",
            get(consumer_groups::get)
                .put(consumer_groups::create)
                .delete(consumer_groups::delete),
        )
        // twinhub's own: message routes while the hub runs.
        .route("/twinhub/routing", get(routing::get).put(routing::put))
        .route("/twinhub/stream", get(stream::stream))
        .route("/twinhub/devices/{id}/messages", post(send_message::send))
        .route("/twinhub/routing/test", post(routing::test))
        .route("/twinhub/routing/fallback", axum::routing::put(routing::put_fallback))
        .route(
            "/twinhub/routing/routes/{name}",
            axum::routing::put(routing::put_route).delete(routing::delete_route),
        )
        // The HTTPS device API (device SAS tokens).
        .route("/devices/{id}/messages/events", post(device_events::send_events))
        .route("/devices/{id}/messages/devicebound", get(device_messages::receive))
        .route(
            "/devices/{id}/messages/devicebound/{lock_token}",
            axum::routing::delete(device_messages::complete_or_reject),
        )
        .route(
            "/devices/{id}/messages/devicebound/{lock_token}/abandon",
            post(device_messages::abandon),
        )
        // The service's purge of a device's cloud-to-device queue (ServiceConnect).
        .route("/devices/{id}/commands", axum::routing::delete(device_messages::purge))
        .fallback(error::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(state)
}
