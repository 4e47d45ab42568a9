//! A webhook receiver for routing tests: a small HTTP server that answers 503 to its first requests (or
//! while it is set down), then 200, and keeps every request it took.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A webhook receiver: answers 503 to the first `failures` requests, then 200; keeps what it took.
pub struct Webhook {
    pub url: String,
    /// Delivery id → (device, application properties, body), for every request answered 200.
    taken: Arc<Mutex<Vec<Received>>>,
    pub requests: Arc<AtomicUsize>,
    /// While set, every request is answered 503.
    pub down: Arc<AtomicBool>,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub delivery_id: String,
    pub device: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

impl Webhook {
    pub async fn start(failures: usize) -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let taken = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (taken_in, requests_in, down_in) = (Arc::clone(&taken), Arc::clone(&requests), Arc::clone(&down));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (taken, requests, down) = (Arc::clone(&taken_in), Arc::clone(&requests_in), Arc::clone(&down_in));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (taken, requests, down) = (Arc::clone(&taken), Arc::clone(&requests), Arc::clone(&down));
                        async move {
                            let seen = requests.fetch_add(1, Ordering::SeqCst);
                            let headers: BTreeMap<String, String> = request
                                .headers()
                                .iter()
                                .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_owned()))
                                .collect();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|body| body.to_bytes())
                                .unwrap_or_default();
                            let status = if seen < failures || down.load(Ordering::SeqCst) {
                                503
                            } else {
                                taken.lock().unwrap().push(Received {
                                    delivery_id: headers.get("iothub-delivery-id").cloned().unwrap_or_default(),
                                    device: headers.get("iothub-connection-device-id").cloned().unwrap_or_default(),
                                    headers,
                                    body,
                                });
                                200
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Webhook {
            url,
            taken,
            requests,
            down,
        }
    }

    pub fn taken(&self) -> Vec<Received> {
        self.taken.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let taken = self.taken();
            let distinct: std::collections::BTreeSet<&str> =
                taken.iter().map(|received| received.delivery_id.as_str()).collect();
            if distinct.len() >= count {
                return taken;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the webhook took {} distinct messages of {count} within {within:?}",
                distinct.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
