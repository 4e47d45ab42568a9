//! `twinhub route`: a running hub's message routes, over its REST API (`/twinhub/routing`).

use crate::client::ServiceClient;
use crate::HubAccess;
use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

const ROUTING: &str = "/twinhub/routing";

#[derive(Subcommand)]
pub enum RouteCommand {
    /// The routes and the fallback route.
    List,
    /// Add a route, or replace the one of that name.
    Add {
        name: String,
        /// DeviceMessages, TwinChangeEvents, DeviceLifecycleEvents or DeviceConnectionStateEvents.
        #[arg(long)]
        source: String,
        /// IoT Hub's routing query language (default: true).
        #[arg(long, default_value = "")]
        condition: String,
        /// The endpoint (`events`: the built-in endpoint).
        #[arg(long, default_value = "events")]
        endpoint: String,
        /// Add it switched off.
        #[arg(long)]
        disabled: bool,
    },
    /// Remove a route.
    Remove { name: String },
    /// Replace every route, endpoint and enrichment and the fallback route with a routes file's (TOML,
    /// as `serve --routes` reads).
    Apply { file: std::path::PathBuf },
    /// Switch the fallback route (device messages no route takes go to `events`) on or off.
    Fallback {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Which routes a message would take, without sending it.
    Test {
        /// The sending device (for `$connectionDeviceId` and `$twin`).
        #[arg(long)]
        device: String,
        /// The message body.
        #[arg(long, default_value = "")]
        body: String,
        /// An application property, `name=value` (repeatable).
        #[arg(long = "property", value_parser = name_value)]
        properties: Vec<(String, String)>,
        #[arg(long)]
        content_type: Option<String>,
        #[arg(long)]
        content_encoding: Option<String>,
        #[arg(long, default_value = "DeviceMessages")]
        source: String,
    },
}

fn name_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

pub async fn run(command: RouteCommand, access: &HubAccess) -> anyhow::Result<()> {
    let client = ServiceClient::new(access)?;
    match command {
        RouteCommand::List => {
            let routing = client.send(Method::GET, ROUTING, None, None).await?;
            let fallback = routing["fallback"].as_bool().unwrap_or(true);
            println!("fallback route: {}", if fallback { "on" } else { "off" });
            for route in routing["routes"].as_array().map(Vec::as_slice).unwrap_or_default() {
                println!(
                    "{}  {}  -> {}{}  {}",
                    route["name"].as_str().unwrap_or_default(),
                    route["source"].as_str().unwrap_or_default(),
                    route["endpoint"].as_str().unwrap_or_default(),
                    if route["enabled"].as_bool() == Some(false) {
                        " (disabled)"
                    } else {
                        ""
                    },
                    route["condition"]
                        .as_str()
                        .filter(|text| !text.is_empty())
                        .unwrap_or("true"),
                );
            }
        }
        RouteCommand::Add {
            name,
            source,
            condition,
            endpoint,
            disabled,
        } => {
            let body = json!({
                "source": source, "condition": condition, "endpoint": endpoint, "enabled": !disabled,
            });
            let path = format!("{ROUTING}/routes/{}", crate::commands::encode(&name));
            client.send(Method::PUT, &path, Some(&body), None).await?;
            println!("route {name} set");
        }
        RouteCommand::Remove { name } => {
            let path = format!("{ROUTING}/routes/{}", crate::commands::encode(&name));
            client.send(Method::DELETE, &path, None, None).await?;
            println!("route {name} removed");
        }
        RouteCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let spec: serde_json::Value =
                toml::from_str(&text).with_context(|| format!("{} is not a valid routes file", file.display()))?;
            client.send(Method::PUT, ROUTING, Some(&spec), None).await?;
            println!("routes of {} applied", file.display());
        }
        RouteCommand::Fallback { state } => {
            let body = json!({ "enabled": state == "on" });
            client
                .send(Method::PUT, &format!("{ROUTING}/fallback"), Some(&body), None)
                .await?;
            println!("fallback route {state}");
        }
        RouteCommand::Test {
            device,
            body,
            properties,
            content_type,
            content_encoding,
            source,
        } => {
            let properties: serde_json::Map<String, serde_json::Value> = properties
                .into_iter()
                .map(|(name, value)| (name, json!(value)))
                .collect();
            let request = json!({
                "source": source, "deviceId": device, "body": body, "properties": properties,
                "contentType": content_type, "contentEncoding": content_encoding,
            });
            let answer = client
                .send(Method::POST, &format!("{ROUTING}/test"), Some(&request), None)
                .await?;
            let routes: Vec<&str> = answer["routes"]
                .as_array()
                .context("the hub's answer has no routes")?
                .iter()
                .filter_map(|route| route.as_str())
                .collect();
            if routes.is_empty() {
                println!("no route takes it");
            } else {
                println!("routes: {}", routes.join(", "));
            }
            let built_in = answer["builtInEndpoint"].as_bool().unwrap_or(false);
            println!("built-in endpoint (events): {}", if built_in { "yes" } else { "no" });
        }
    }
    Ok(())
}
