//! The bench's REST client: one kept-alive HTTP/1.1 connection over TLS per simulated back-end client,
//! requests built from a fixed token. Lighter than a pooled general-purpose client, so on a shared
//! machine more of the CPU goes to the hub being measured.

use super::mqtt::Endpoint;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct HttpConnection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    authorization: Arc<str>,
}

impl HttpConnection {
    pub async fn open(
        address: SocketAddr,
        endpoint: &Endpoint,
        host: &str,
        authorization: Arc<str>,
    ) -> anyhow::Result<HttpConnection> {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let mut tls = (*endpoint.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(endpoint.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(HttpConnection {
            sender,
            host: host.to_owned(),
            authorization,
        })
    }

    /// One request; the body of a 2xx answer, or an error with the status and body.
    pub async fn call(&mut self, method: hyper::Method, path: &str, body: Option<Bytes>) -> anyhow::Result<Bytes> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{path}?api-version=2021-04-12"))
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::AUTHORIZATION, &*self.authorization);
        if body.is_some() {
            request = request
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::IF_MATCH, "*");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }
}
