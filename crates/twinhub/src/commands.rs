//! `twinhub device ...`, `twinhub twin ...`, `twinhub method ...` and `twinhub c2d ...`: tables for lists,
//! JSON for documents.

use crate::client::ServiceClient;
use crate::HubAccess;
use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Register a device (keys are generated).
    Create {
        id: String,
        /// Register it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Show a device identity as JSON.
    Show { id: String },
    /// List devices as a table.
    List {
        #[arg(long, default_value_t = 1000)]
        top: usize,
    },
    /// Delete a device and its twin.
    Delete { id: String },
    /// Print a device's connection string (the last line of output).
    ConnectionString { id: String },
}

#[derive(Subcommand)]
pub enum TwinCommand {
    /// Show a twin as JSON.
    Show { id: String },
    /// Merge tags or desired properties into a twin (null deletes a key).
    Update {
        id: String,
        /// Tags to merge, as JSON.
        #[arg(long, required_unless_present = "desired")]
        tags: Option<String>,
        /// Desired properties to merge, as JSON.
        #[arg(long)]
        desired: Option<String>,
        /// Only update if the twin's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum MethodCommand {
    /// Call a direct method on a connected device and print its answer: `{"status":..,"payload":..}`.
    Invoke {
        /// The device.
        id: String,
        /// The method's name.
        name: String,
        /// The payload, as JSON.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Call it on this module of the device.
        #[arg(long)]
        module: Option<String>,
        /// Seconds to wait for the answer (5 to 300).
        #[arg(long, default_value_t = 30)]
        response_timeout: u64,
        /// Seconds to wait for the device to come online first (0 to 300).
        #[arg(long, default_value_t = 0)]
        connect_timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum C2dCommand {
    /// Send a cloud-to-device message to a device (over AMQP, as the service SDKs do); it waits in the
    /// device's queue until the device takes it. Prints `sent to <device>` once the hub holds it durably.
    Send {
        /// The device.
        device: String,
        /// The message body, as is.
        body: String,
        /// The message id (`$.mid` for the device).
        #[arg(long)]
        message_id: Option<String>,
        /// The correlation id (`$.cid` for the device).
        #[arg(long)]
        correlation_id: Option<String>,
        /// The feedback to ask for (`iothub-ack`).
        #[arg(long, value_enum)]
        ack: Option<crate::cloud_to_device::Ack>,
        /// An application property, `key=value`; repeat for more.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// The hub's AMQP port.
        #[arg(long, default_value_t = 5671)]
        amqp_port: u16,
    },
}

pub(crate) fn encode(id: &str) -> String {
    percent_encode(id)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn device(command: DeviceCommand, access: &HubAccess) -> anyhow::Result<()> {
    let client = ServiceClient::new(access)?;
    match command {
        DeviceCommand::Create { id, disabled } => {
            let status = if disabled { "disabled" } else { "enabled" };
            let body = json!({"deviceId": id, "status": status, "authentication": {"type": "sas"}});
            print_json(
                &client
                    .send(Method::PUT, &format!("/devices/{}", encode(&id)), Some(&body), None)
                    .await?,
            )
        }
        DeviceCommand::Show { id } => print_json(
            &client
                .send(Method::GET, &format!("/devices/{}", encode(&id)), None, None)
                .await?,
        ),
        DeviceCommand::List { top } => {
            let devices = client
                .send(Method::GET, &format!("/devices?top={top}"), None, None)
                .await?;
            let rows: Vec<[String; 4]> = devices
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|device| {
                    ["deviceId", "status", "connectionState", "lastActivityTime"]
                        .map(|field| device[field].as_str().unwrap_or("").to_owned())
                })
                .collect();
            print_table(&["DEVICE ID", "STATUS", "CONNECTION", "LAST ACTIVITY"], &rows);
            Ok(())
        }
        DeviceCommand::Delete { id } => {
            client
                .send(Method::DELETE, &format!("/devices/{}", encode(&id)), None, Some("*"))
                .await?;
            println!("deleted {id}");
            Ok(())
        }
        DeviceCommand::ConnectionString { id } => {
            let device = client
                .send(Method::GET, &format!("/devices/{}", encode(&id)), None, None)
                .await?;
            let key = device["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .context("the device has no symmetric key (it does not use SAS authentication)")?;
            println!(
                "{}",
                twinhub_core::policy::device_connection_string(client.host_name(), &id, key)
            );
            Ok(())
        }
    }
}

pub async fn twin(command: TwinCommand, access: &HubAccess) -> anyhow::Result<()> {
    let client = ServiceClient::new(access)?;
    match command {
        TwinCommand::Show { id } => print_json(
            &client
                .send(Method::GET, &format!("/twins/{}", encode(&id)), None, None)
                .await?,
        ),
        TwinCommand::Update {
            id,
            tags,
            desired,
            etag,
        } => {
            let parse = |what: &str, text: &str| -> anyhow::Result<serde_json::Value> {
                serde_json::from_str(text).with_context(|| format!("--{what} is not valid JSON"))
            };
            let mut patch = serde_json::Map::new();
            if let Some(tags) = tags {
                patch.insert("tags".into(), parse("tags", &tags)?);
            }
            if let Some(desired) = desired {
                patch.insert("properties".into(), json!({"desired": parse("desired", &desired)?}));
            }
            let body = serde_json::Value::Object(patch);
            let if_match = etag.as_deref().unwrap_or("*");
            print_json(
                &client
                    .send(
                        Method::PATCH,
                        &format!("/twins/{}", encode(&id)),
                        Some(&body),
                        Some(if_match),
                    )
                    .await?,
            )
        }
    }
}

pub async fn method(command: MethodCommand, access: &HubAccess) -> anyhow::Result<()> {
    let client = ServiceClient::new(access)?;
    match command {
        MethodCommand::Invoke {
            id,
            name,
            payload,
            module,
            response_timeout,
            connect_timeout,
        } => {
            let payload: serde_json::Value = serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let body = json!({
                "methodName": name,
                "payload": payload,
                "responseTimeoutInSeconds": response_timeout,
                "connectTimeoutInSeconds": connect_timeout,
            });
            let path = match module {
                Some(module) => format!("/twins/{}/modules/{}/methods", encode(&id), encode(&module)),
                None => format!("/twins/{}/methods", encode(&id)),
            };
            print_json(&client.send(Method::POST, &path, Some(&body), None).await?)
        }
    }
}

pub async fn c2d(command: C2dCommand, access: &HubAccess) -> anyhow::Result<()> {
    match command {
        C2dCommand::Send {
            device,
            body,
            message_id,
            correlation_id,
            ack,
            properties,
            amqp_port,
        } => {
            let properties = properties
                .iter()
                .map(|pair| {
                    pair.split_once('=')
                        .filter(|(key, _)| !key.is_empty())
                        .map(|(key, value)| (key.to_owned(), value.to_owned()))
                        .with_context(|| format!("--property {pair}: expected key=value"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (connection_string, ca) = crate::client::connection_and_ca(access)?;
            let connection = twinhub_core::policy::ServiceConnectionString::parse(&connection_string)
                .context("invalid connection string")?;
            let mut sender = crate::cloud_to_device::CloudToDeviceSender::connect(
                &connection.host_name,
                amqp_port,
                crate::bench::tls_config(ca.as_ref())?,
                &connection.key_name,
                &connection.key,
            )
            .await?;
            let message = crate::cloud_to_device::Outgoing {
                device_id: device.clone(),
                body: body.into_bytes(),
                message_id,
                correlation_id,
                ack,
                properties,
            };
            let sent = sender.send(&message).await;
            sender.close().await;
            sent?;
            println!("sent to {device}");
            Ok(())
        }
    }
}

pub fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[derive(Subcommand)]
pub enum ConsumerGroupCommand {
    /// Create a consumer group of the Event Hubs-compatible endpoint (creating one that exists is fine).
    Create {
        name: String,
        /// Of this event hub endpoint (routes), instead of the built-in endpoint.
        #[arg(long)]
        event_hub: Option<String>,
    },
    /// List the consumer groups ($Default first).
    List {
        #[arg(long)]
        event_hub: Option<String>,
    },
    /// Delete a consumer group ($Default cannot be deleted).
    Delete {
        name: String,
        #[arg(long)]
        event_hub: Option<String>,
    },
}

/// The consumer groups' path of the built-in endpoint, or of an event hub endpoint.
fn consumer_groups_path(event_hub: Option<&str>) -> String {
    format!(
        "/eventHubEndpoints/{}/ConsumerGroups",
        encode(event_hub.unwrap_or(twinhub_core::routing::BUILT_IN_ENDPOINT))
    )
}

pub async fn consumer_group(command: ConsumerGroupCommand, access: &HubAccess) -> anyhow::Result<()> {
    let client = ServiceClient::new(access)?;
    match command {
        ConsumerGroupCommand::Create { name, event_hub } => {
            let path = format!("{}/{}", consumer_groups_path(event_hub.as_deref()), encode(&name));
            client.send(Method::PUT, &path, None, None).await?;
            println!("created {name}");
        }
        ConsumerGroupCommand::List { event_hub } => {
            let groups = client
                .send(Method::GET, &consumer_groups_path(event_hub.as_deref()), None, None)
                .await?;
            for group in groups["value"].as_array().map(Vec::as_slice).unwrap_or_default() {
                println!("{}", group["name"].as_str().unwrap_or_default());
            }
        }
        ConsumerGroupCommand::Delete { name, event_hub } => {
            let path = format!("{}/{}", consumer_groups_path(event_hub.as_deref()), encode(&name));
            client.send(Method::DELETE, &path, None, None).await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}
