//! A raw MQTT 3.1.1 device client for integration tests: TLS to the hub's 8883 with its CA, SAS tokens
//! signed like the SDKs, and direct access to packets and bytes, so tests can also send what no SDK would.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet, SubscribeReturnCode};
use std::net::Ipv4Addr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{FramedRead, FramedWrite};

pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

type Tls = TlsStream<TcpStream>;

pub struct MqttClient {
    reader: FramedRead<ReadHalf<Tls>, Codec>,
    writer: FramedWrite<WriteHalf<Tls>, Codec>,
    next_id: u16,
}

/// What a CONNECT carries.
pub struct Credentials {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub clean_session: bool,
    pub keep_alive: u16,
}

impl Credentials {
    /// A module's, as the SDKs' module clients send them: client id `<device>/<module>`, username
    /// `<host>/<device>/<module>/?api-version=...`, a SAS token for the module's resource.
    pub fn module(host: &str, device_id: &str, module_id: &str, key: &str, lifetime_seconds: i64) -> Credentials {
        let expiry = (super::rest_client::now() as i64 + lifetime_seconds) as u64;
        let resource = format!("{host}/devices/{device_id}/modules/{module_id}");
        let token = twinhub_core::sas::sign(&resource, key, None, expiry).unwrap();
        Credentials {
            client_id: format!("{device_id}/{module_id}"),
            username: Some(format!(
                "{host}/{device_id}/{module_id}/?api-version=2021-04-12&DeviceClientType=twinhub-tests"
            )),
            password: Some(token),
            clean_session: false,
            keep_alive: 60,
        }
    }

    /// As the SDKs send them: username `<host>/<id>/?api-version=...`, password a SAS token.
    pub fn device(host: &str, device_id: &str, key: &str, lifetime_seconds: i64) -> Credentials {
        let expiry = (super::rest_client::now() as i64 + lifetime_seconds) as u64;
        let token = twinhub_core::sas::sign(&format!("{host}/devices/{device_id}"), key, None, expiry).unwrap();
        Credentials {
            client_id: device_id.to_owned(),
            username: Some(format!(
                "{host}/{device_id}/?api-version=2021-04-12&DeviceClientType=twinhub-tests"
            )),
            password: Some(token),
            clean_session: false,
            keep_alive: 60,
        }
    }
}

pub async fn tls_connect(address: Ipv4Addr, port: u16, ca_pem_path: &std::path::Path) -> Tls {
    let pem = std::fs::read(ca_pem_path).expect("CA certificate");
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect((address, port))
        .await
        .expect("TCP connect to the hub");
    let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(address).into());
    connector.connect(name, tcp).await.expect("TLS handshake with the hub")
}

impl MqttClient {
    pub async fn open(address: Ipv4Addr, ca_pem_path: &std::path::Path) -> MqttClient {
        let tls = tls_connect(address, super::support::MQTT_PORT, ca_pem_path).await;
        let (reader, writer) = tokio::io::split(tls);
        MqttClient {
            reader: FramedRead::new(reader, Codec::default()),
            writer: FramedWrite::new(writer, Codec::default()),
            next_id: 1,
        }
    }

    /// Opens a connection and sends CONNECT; returns the client and the CONNACK's (code, session present).
    pub async fn connect(
        address: Ipv4Addr,
        ca_pem_path: &std::path::Path,
        credentials: &Credentials,
    ) -> (MqttClient, ConnectAckReason, bool) {
        let mut client = MqttClient::open(address, ca_pem_path).await;
        client.send(connect_packet(credentials)).await;
        match client.receive().await {
            Some(Packet::ConnectAck(ack)) => (client, ack.return_code, ack.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        self.writer.send(packet).await.expect("send a packet");
    }

    /// Bytes as they are, for malformed input.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.writer.get_mut();
        io.write_all(bytes).await.expect("write");
        io.flush().await.expect("flush");
    }

    /// The next packet; None when the hub closed the connection (or sent garbage).
    pub async fn receive(&mut self) -> Option<Packet> {
        match tokio::time::timeout(RECEIVE_TIMEOUT, self.reader.next()).await {
            Ok(Some(Ok((packet, _)))) => Some(packet),
            Ok(_) => None,
            Err(_) => panic!("no packet from the hub within {RECEIVE_TIMEOUT:?}"),
        }
    }

    /// Waits until the hub closes the connection, failing if it sends a packet first.
    pub async fn expect_closed(&mut self, within: Duration) {
        match tokio::time::timeout(within, self.reader.next()).await {
            Ok(None) | Ok(Some(Err(_))) => {}
            Ok(Some(Ok((packet, _)))) => panic!("expected the hub to close, got {packet:?}"),
            Err(_) => panic!("the hub did not close the connection within {within:?}"),
        }
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        let id = NonZeroU16::new(self.next_id).unwrap();
        self.next_id += 1;
        id
    }

    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReturnCode> {
        let packet_id = self.packet_id();
        self.send(Packet::Subscribe {
            packet_id,
            topic_filters: filters
                .iter()
                .map(|(filter, qos)| (ByteString::from(filter.to_string()), *qos))
                .collect(),
        })
        .await;
        match self.receive().await {
            Some(Packet::SubscribeAck {
                packet_id: acked,
                status,
            }) if acked == packet_id => status,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS) -> Option<NonZeroU16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.send(Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(topic.to_owned()),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
            properties: None,
        })))
        .await;
        packet_id
    }

    /// A QoS 1 PUBLISH that may meet a closed connection: its packet id, or None once the hub is gone.
    pub async fn try_publish(&mut self, topic: &str, payload: &[u8]) -> Option<NonZeroU16> {
        let packet_id = self.packet_id();
        let publish = Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from(topic.to_owned()),
            packet_id: Some(packet_id),
            payload: Bytes::copy_from_slice(payload),
            properties: None,
        }));
        self.writer.send(publish).await.ok().map(|()| packet_id)
    }

    /// The next PUBLISH from the hub (PUBACKing QoS 1), skipping nothing else: any other packet fails.
    pub async fn next_publish(&mut self) -> (String, Bytes) {
        match self.receive().await {
            Some(Packet::Publish(publish)) => {
                if let Some(packet_id) = publish.packet_id {
                    self.send(Packet::PublishAck { packet_id }).await;
                }
                (publish.topic.to_string(), publish.payload)
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Twin request and its response: (status, topic, body).
    pub async fn twin(&mut self, topic: &str, payload: &[u8]) -> (u16, String, Bytes) {
        self.publish(topic, payload, QoS::AtMostOnce).await;
        let (topic, body) = self.next_publish().await;
        let status = topic
            .strip_prefix("$iothub/twin/res/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|status| status.parse().ok())
            .unwrap_or_else(|| panic!("not a twin response topic: {topic}"));
        (status, topic, body)
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect).await;
    }
}

pub fn connect_packet(credentials: &Credentials) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol(4),
        clean_session: credentials.clean_session,
        keep_alive: credentials.keep_alive,
        last_will: None,
        client_id: ByteString::from(credentials.client_id.clone()),
        username: credentials.username.clone().map(ByteString::from),
        password: credentials.password.clone().map(Bytes::from),
        cert: None,
    }))
}

/// A packet encoded, for tests that alter bytes.
pub fn encode(packet: Packet) -> BytesMut {
    use tokio_util::codec::Encoder;
    let mut buffer = BytesMut::new();
    Codec::default().encode(packet, &mut buffer).unwrap();
    buffer
}
