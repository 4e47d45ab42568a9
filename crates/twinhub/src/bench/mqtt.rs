//! The bench's MQTT device connection: TLS from a chosen loopback source address, CONNECT with a SAS
//! token (or none, for a plain broker), and pipelined request/response loops that measure round trips.
//! The same code drives twinhub and the peer broker, so their figures compare like with like.

use super::stats::{Latencies, Progress};
use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::StreamExt;
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Encoder, FramedRead};
use twinhub_server::mqtt::wire;

pub type Tls = TlsStream<TcpStream>;

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Local addresses to connect from, in turn: each gives its own ~28k ephemeral ports.
    pub sources: Vec<IpAddr>,
}

/// What a connection authenticates with; `None` for a broker that takes anonymous clients.
#[derive(Clone)]
pub struct Login {
    pub username: String,
    pub password: String,
}

pub struct Connection {
    reader: FramedRead<ReadHalf<Tls>, Codec>,
    writer: WriteHalf<Tls>,
    out: BytesMut,
    codec: Codec,
    next_packet_id: u16,
}

impl Endpoint {
    /// TCP from the `index`-th source address, then TLS.
    pub async fn tls(&self, index: usize) -> anyhow::Result<Tls> {
        let source = self.sources[index % self.sources.len()];
        let socket = if self.address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket
            .connect(self.address)
            .await
            .with_context(|| format!("connect to {} from {source}", self.address))?;
        tcp.set_nodelay(true)?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")
    }

    pub async fn connect(&self, index: usize, client_id: &str, login: Option<&Login>) -> anyhow::Result<Connection> {
        let tls = self.tls(index).await?;
        let (reader, writer) = tokio::io::split(tls);
        let mut connection = Connection {
            reader: FramedRead::new(reader, Codec::default()),
            writer,
            out: BytesMut::with_capacity(4096),
            codec: Codec::default(),
            next_packet_id: 1,
        };
        connection.push(Packet::Connect(Box::new(Connect {
            protocol: Protocol(4),
            clean_session: true,
            keep_alive: 300,
            last_will: None,
            client_id: ByteString::from(client_id.to_owned()),
            username: login.map(|login| ByteString::from(login.username.clone())),
            password: login.map(|login| Bytes::from(login.password.clone())),
            cert: None,
        })))?;
        connection.flush().await?;
        match connection.receive().await? {
            Packet::ConnectAck(ack) if ack.return_code == ConnectAckReason::ConnectionAccepted => Ok(connection),
            other => bail!("{client_id}: CONNECT refused: {other:?}"),
        }
    }
}

impl Connection {
    fn push(&mut self, packet: Packet) -> anyhow::Result<()> {
        self.codec
            .encode(packet, &mut self.out)
            .map_err(|error| anyhow::anyhow!("encode: {error}"))
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn receive(&mut self) -> anyhow::Result<Packet> {
        match tokio::time::timeout(Duration::from_secs(30), self.reader.next()).await {
            Ok(Some(Ok((packet, _)))) => Ok(packet),
            Ok(Some(Err(error))) => bail!("receive: {error}"),
            Ok(None) => bail!("the server closed the connection"),
            Err(_) => bail!("nothing received for 30 s"),
        }
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        let id = NonZeroU16::new(self.next_packet_id).unwrap_or(NonZeroU16::MIN);
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    fn publish(&mut self, topic: String, payload: Bytes, qos: QoS) -> anyhow::Result<Option<NonZeroU16>> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.push(wire::publish(topic, payload, qos, packet_id))?;
        Ok(packet_id)
    }

    pub async fn subscribe(&mut self, filters: &[&str]) -> anyhow::Result<()> {
        let filters: Vec<(&str, QoS)> = filters.iter().map(|filter| (*filter, QoS::AtMostOnce)).collect();
        self.subscribe_with(&filters).await
    }

    /// Subscribes to each filter at its QoS; a QoS 1 PUBLISH that comes before the SUBACK is acknowledged
    /// (and otherwise ignored).
    pub async fn subscribe_with(&mut self, filters: &[(&str, QoS)]) -> anyhow::Result<()> {
        let packet_id = self.packet_id();
        self.push(Packet::Subscribe {
            packet_id,
            topic_filters: filters
                .iter()
                .map(|(filter, qos)| (ByteString::from((*filter).to_owned()), *qos))
                .collect(),
        })?;
        self.flush().await?;
        loop {
            match self.receive().await? {
                Packet::SubscribeAck { .. } => return Ok(()),
                Packet::Publish(publish) => {
                    if let Some(packet_id) = publish.packet_id {
                        self.push(Packet::PublishAck { packet_id })?;
                        self.flush().await?;
                    }
                }
                _ => {}
            }
        }
    }

    pub async fn disconnect(mut self) {
        let _ = self.push(Packet::Disconnect);
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
    }

    /// Twin requests (`make_request(rid)` → topic and payload) until `until`, at most `in_flight`
    /// outstanding: each answer sends the next at once (saturation), or, with `pace`, one request per
    /// `pace` (the latency at a given rate). Then waits for the last answers. Returns the latencies and
    /// the last rid answered 2xx.
    pub async fn twin_requests(
        &mut self,
        in_flight: usize,
        pace: Option<Duration>,
        until: Instant,
        progress: &Progress,
        make_request: impl FnMut(u64) -> (String, Bytes),
    ) -> anyhow::Result<(Latencies, u64)> {
        let mut load = TwinLoad {
            make_request,
            sent: HashMap::with_capacity(in_flight),
            latencies: Latencies::default(),
            next_rid: 1,
            last_ok: 0,
        };
        // Paced devices start at different points of the interval, so requests do not come in waves.
        let pace = pace.unwrap_or(Duration::ZERO);
        let offset = Duration::from_nanos(rand_below(pace.as_nanos() as u64));
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, pace.max(Duration::from_micros(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let saturate = pace.is_zero();
        if saturate {
            for _ in 0..in_flight {
                load.send(self)?;
            }
            self.flush().await?;
        }
        let deadline = tokio::time::sleep_until(until.into());
        tokio::pin!(deadline);
        loop {
            let sending = Instant::now() < until;
            if !sending && load.sent.is_empty() {
                break;
            }
            tokio::select! {
                _ = ticker.tick(), if !saturate && sending && load.sent.len() < in_flight => {
                    load.send(self)?;
                    self.flush().await?;
                }
                packet = self.reader.next() => {
                    let packet = match packet {
                        Some(Ok((packet, _))) => packet,
                        Some(Err(error)) => bail!("receive: {error}"),
                        None => bail!("the server closed the connection"),
                    };
                    let Packet::Publish(publish) = packet else { continue };
                    if load.answer(&publish)? {
                        progress.add(1);
                        if saturate && Instant::now() < until {
                            load.send(self)?;
                        }
                    }
                    // Answers that arrived together are answered together.
                    if self.reader.read_buffer().is_empty() {
                        self.flush().await?;
                    }
                }
                _ = &mut deadline, if sending => {}
            }
        }
        self.flush().await?;
        Ok((load.latencies, load.last_ok))
    }

    /// QoS 1 publishes on `topic` every `pace` until `until`, each payload made when it is sent (so it can
    /// carry its send time), PUBACKs read as they come; returns how many were acknowledged.
    pub async fn paced_publishes(
        &mut self,
        topic: &str,
        payload: impl Fn() -> Bytes,
        pace: Duration,
        until: Instant,
    ) -> anyhow::Result<u64> {
        let offset = Duration::from_nanos(rand_below(pace.as_nanos() as u64));
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, pace.max(Duration::from_micros(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep_until(until.into());
        tokio::pin!(deadline);
        let (mut unacknowledged, mut acknowledged) = (0u64, 0u64);
        loop {
            let sending = Instant::now() < until;
            if !sending && unacknowledged == 0 {
                return Ok(acknowledged);
            }
            tokio::select! {
                _ = ticker.tick(), if sending => {
                    self.publish(topic.to_owned(), payload(), QoS::AtLeastOnce)?;
                    unacknowledged += 1;
                    self.flush().await?;
                }
                packet = self.reader.next() => {
                    match packet {
                        Some(Ok((Packet::PublishAck { .. }, _))) => {
                            unacknowledged = unacknowledged.saturating_sub(1);
                            acknowledged += 1;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => bail!("receive: {error}"),
                        None => bail!("the server closed the connection"),
                    }
                }
                _ = &mut deadline, if sending => {}
            }
        }
    }

    /// QoS 1 publishes on `topic`, `in_flight` at a time, until `until`; the round trip is PUBLISH to PUBACK.
    pub async fn publishes(
        &mut self,
        topic: &str,
        payload: Bytes,
        in_flight: usize,
        until: Instant,
        progress: &Progress,
    ) -> anyhow::Result<Latencies> {
        let mut latencies = Latencies::default();
        let mut sent: HashMap<u16, Instant> = HashMap::with_capacity(in_flight);
        for _ in 0..in_flight {
            if let Some(id) = self.publish(topic.to_owned(), payload.clone(), QoS::AtLeastOnce)? {
                sent.insert(id.get(), Instant::now());
            }
        }
        self.flush().await?;
        while !sent.is_empty() {
            let Packet::PublishAck { packet_id } = self.receive().await? else {
                continue;
            };
            let Some(started) = sent.remove(&packet_id.get()) else {
                continue;
            };
            latencies.record(started.elapsed());
            progress.add(1);
            if Instant::now() < until {
                if let Some(id) = self.publish(topic.to_owned(), payload.clone(), QoS::AtLeastOnce)? {
                    sent.insert(id.get(), Instant::now());
                }
            }
            if self.reader.read_buffer().is_empty() {
                self.flush().await?;
            }
        }
        self.flush().await?;
        Ok(latencies)
    }

    /// Answers every direct method request at once, with status 200 and the request's payload, until
    /// `until`. Returns how many it answered.
    pub async fn answer_methods(&mut self, until: Instant) -> anyhow::Result<u64> {
        let mut answered = 0;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let packet = match tokio::time::timeout(left, self.reader.next()).await {
                Err(_) => {
                    self.flush().await?;
                    return Ok(answered);
                }
                Ok(Some(Ok((packet, _)))) => packet,
                Ok(Some(Err(error))) => bail!("receive: {error}"),
                Ok(None) => bail!("the hub closed the connection"),
            };
            if let Packet::Publish(publish) = packet {
                let rid = publish
                    .topic
                    .strip_prefix("$iothub/methods/POST/")
                    .and_then(|rest| rest.split_once("?$rid="))
                    .map(|(_, rid)| rid.to_owned());
                if let Some(rid) = rid {
                    let topic = format!("$iothub/methods/res/200/?$rid={rid}");
                    self.publish(topic, publish.payload.clone(), QoS::AtMostOnce)?;
                    answered += 1;
                }
            }
            if self.reader.read_buffer().is_empty() {
                self.flush().await?;
            }
        }
    }

    /// Cloud-to-device messages until `stop` turns true, each PUBACKed at once (which completes it). Those
    /// of run `run` (payload `{"run":..,"n":..,"sent":<unix nanos>}`) are timed from their send time, the
    /// first arrival of each `n` only; `arrived` counts them as they come. Returns `n` → send-to-arrival
    /// latency, and when the last of them arrived.
    pub async fn cloud_to_device_messages(
        &mut self,
        run: u64,
        mut stop: tokio::sync::watch::Receiver<bool>,
        arrived: &std::sync::atomic::AtomicU64,
    ) -> anyhow::Result<(HashMap<u64, Duration>, Option<Instant>)> {
        let mut latencies = HashMap::new();
        let mut last = None;
        loop {
            if *stop.borrow() {
                self.flush().await?;
                return Ok((latencies, last));
            }
            let packet = tokio::select! {
                packet = self.reader.next() => packet,
                _ = stop.changed() => continue,
            };
            let packet = match packet {
                Some(Ok((packet, _))) => packet,
                Some(Err(error)) => bail!("receive: {error}"),
                None => bail!("the hub closed the connection"),
            };
            if let Packet::Publish(publish) = packet {
                let now = unix_nanos();
                if let Some(packet_id) = publish.packet_id {
                    self.push(Packet::PublishAck { packet_id })?;
                }
                if let Some((message_run, n, sent)) = cloud_to_device_stamp(&publish.payload) {
                    if message_run == run && !latencies.contains_key(&n) {
                        let latency = Duration::from_nanos(now.saturating_sub(u128::from(sent)) as u64);
                        latencies.insert(n, latency);
                        last = Some(Instant::now());
                        arrived.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            if self.reader.read_buffer().is_empty() {
                self.flush().await?;
            }
        }
    }

    /// Desired notifications until `until`: (desired `$version`, arrival) pairs.
    pub async fn desired_notifications(&mut self, until: Instant) -> anyhow::Result<Vec<(u64, Instant)>> {
        let mut arrivals = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let packet = match tokio::time::timeout(left, self.reader.next()).await {
                Err(_) => return Ok(arrivals),
                Ok(Some(Ok((packet, _)))) => packet,
                Ok(Some(Err(error))) => bail!("receive: {error}"),
                Ok(None) => bail!("the hub closed the connection"),
            };
            let arrived = Instant::now();
            if let Packet::Publish(publish) = packet {
                if let Some(version) = publish
                    .topic
                    .split_once("?$version=")
                    .and_then(|(_, version)| version.parse().ok())
                {
                    arrivals.push((version, arrived));
                }
            }
        }
    }
}

/// The requests of one device's twin load and what came of them.
struct TwinLoad<F> {
    make_request: F,
    sent: HashMap<u64, Instant>,
    latencies: Latencies,
    next_rid: u64,
    last_ok: u64,
}

impl<F: FnMut(u64) -> (String, Bytes)> TwinLoad<F> {
    fn send(&mut self, connection: &mut Connection) -> anyhow::Result<()> {
        let (topic, payload) = (self.make_request)(self.next_rid);
        connection.publish(topic, payload, QoS::AtMostOnce)?;
        self.sent.insert(self.next_rid, Instant::now());
        self.next_rid += 1;
        Ok(())
    }

    /// Whether `publish` answered one of our requests; a non-2xx answer fails the run.
    fn answer(&mut self, publish: &Publish) -> anyhow::Result<bool> {
        let (status, rid) =
            twin_status_and_rid(&publish.topic).with_context(|| format!("unexpected topic {}", publish.topic))?;
        let Some(started) = self.sent.remove(&rid) else {
            return Ok(false);
        };
        if status == 429 {
            bail!(
                "the hub throttled a device (429): each connection may send --device-twin-requests-per-second \
                 (burst --device-twin-request-burst) twin requests; use more devices, or start the hub with higher limits"
            );
        }
        if !(200..300).contains(&status) {
            bail!(
                "twin request answered {status}: {}",
                String::from_utf8_lossy(&publish.payload)
            );
        }
        self.latencies.record(started.elapsed());
        self.last_ok = self.last_ok.max(rid);
        Ok(true)
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// A bench cloud-to-device payload's (run, n, send time in Unix nanoseconds).
fn cloud_to_device_stamp(payload: &[u8]) -> Option<(u64, u64, u64)> {
    let body: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some((body["run"].as_u64()?, body["n"].as_u64()?, body["sent"].as_u64()?))
}

/// A cheap spread of start offsets; not for anything that needs real randomness.
fn rand_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound.max(1)
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&...]`
fn twin_status_and_rid(topic: &str) -> Option<(u16, u64)> {
    let rest = topic.strip_prefix("$iothub/twin/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let rid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))?
        .parse()
        .ok()?;
    Some((status.parse().ok()?, rid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn twin_response_topics_give_status_and_request_id() {
        assert_eq!(
            super::twin_status_and_rid("$iothub/twin/res/204/?$rid=17&$version=3"),
            Some((204, 17))
        );
        assert_eq!(super::twin_status_and_rid("$iothub/twin/res/200/?$rid=x"), None);
    }

    #[test]
    fn cloud_to_device_payloads_carry_run_sequence_and_send_time() {
        assert_eq!(
            super::cloud_to_device_stamp(br#"{"run":7,"n":3,"sent":1700000000000000000}"#),
            Some((7, 3, 1_700_000_000_000_000_000))
        );
        assert_eq!(super::cloud_to_device_stamp(b"hello"), None);
    }
}
