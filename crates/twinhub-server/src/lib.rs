//! The network edge of the hub: TLS listeners, the service REST API, and what a hub keeps in its data
//! directory besides the store (policies, CA and server certificate).
//!
//! Architecture invariant: no twin rule, version or etag is decided here; handlers translate between the
//! wire and `twinhub_hub::Hub` calls, and map `HubError` to the wire in one place per protocol.

pub mod amqp;
pub mod console;

pub mod endpoints;
pub mod material;
pub mod mqtt;
pub mod operations;
pub mod rest;
pub mod server;
pub mod tls;
pub mod twin_failure;
pub mod websocket;

pub use material::{HubMaterial, MaterialError};
pub use server::{default_hub_name, serve, RunningHub, ServeConfig, ServeError};
