//! Synthetic twins for the benchmarks: deterministic (splitmix64, fixed seed), realistic in shape, about
//! 1 KB of tags, desired and reported JSON each. Shared by query_bench and store_bench.

use serde_json::{json, Value};
use twinhub_core::json::DeviceDraft;
use twinhub_core::record::Presence;
use twinhub_core::twin::{ReportedPatch, TwinPatch};
use twinhub_core::{DeviceRecord, Timestamp, Twin, TwinRules};

/// splitmix64: deterministic, tiny, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const REGIONS: [&str; 8] = [
    "us-east",
    "us-west",
    "eu-west",
    "eu-north",
    "asia-east",
    "asia-south",
    "sa-east",
    "au-east",
];
const OWNERS: [&str; 6] = [
    "ops-team@contoso.example",
    "field-service@contoso.example",
    "plant-maintenance@fabrikam.example",
    "iot-platform@fabrikam.example",
    "facilities@northwind.example",
    "lab@adventure-works.example",
];
const MODELS: [&str; 5] = [
    "TH-100",
    "TH-200",
    "PX-7 Gateway",
    "SensorPod Mini",
    "Edge Controller 3",
];

fn firmware(rng: &mut Rng) -> String {
    format!("{}.{}.{}", 1 + rng.below(3), rng.below(10), rng.below(20))
}

fn iso_time(rng: &mut Rng) -> String {
    format!(
        "2025-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000)
    )
}

/// Tags, desired and reported of twin `i`: about 1 KB of JSON together.
pub fn twin_sections(i: usize, plants: usize, rng: &mut Rng) -> (Value, Value, Value) {
    let region = rng.pick(&REGIONS);
    let plant = format!("plant-{:05}", rng.below(plants as u64));
    let tags = json!({
        "location": {
            "region": region,
            "plant": plant,
            "building": format!("b-{}", rng.below(40)),
            "floor": rng.below(12) as i64,
        },
        "fleet": format!("fleet-{}", rng.below(50)),
        "owner": rng.pick(&OWNERS),
        "serial": format!("SN-{:08X}-{:04}", rng.next() as u32, i % 10_000),
        "costCenter": format!("CC-{}", 1000 + rng.below(200)),
    });
    let desired_version = firmware(rng);
    let interval = [5, 10, 30, 60, 300][rng.below(5) as usize];
    let desired = json!({
        "telemetry": {
            "interval": interval,
            "enabled": rng.below(10) != 0,
        },
        "firmware": {
            "version": desired_version,
            "url": format!("https://updates.contoso.example/firmware/{desired_version}/image.bin"),
            "checksum": format!("sha256:{:016x}{:016x}", rng.next(), rng.next()),
        },
        "thresholds": {"temperatureHigh": 80, "temperatureLow": 5, "batteryLow": 15},
    });
    let roll = rng.below(10);
    let connectivity = if roll < 4 {
        "cellular"
    } else if roll < 8 {
        "wifi"
    } else {
        "ethernet"
    };
    let reported = json!({
        "connectivity": {
            "type": connectivity,
            "signalStrength": -(40 + rng.below(60) as i64),
            "ipAddress": format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(256)),
        },
        "temperature": (rng.unit() * 100_000.0).round() / 1000.0,
        "battery": rng.below(101) as i64,
        "firmware": {
            "version": firmware(rng),
            "status": rng.pick(&["current", "downloading", "applying", "failed"]),
            "installedAt": iso_time(rng),
        },
        "location": {
            "latitude": (rng.unit() * 180_000.0).round() / 1000.0 - 90.0,
            "longitude": (rng.unit() * 360_000.0).round() / 1000.0 - 180.0,
        },
        "model": rng.pick(&MODELS),
        "manufacturer": "Contoso Devices Ltd.",
        "lastBoot": iso_time(rng),
        "uptimeSeconds": rng.below(10_000_000) as i64,
        "diagnostics": {"errors": rng.below(5) as i64, "lastError": "none"},
    });
    (tags, desired, reported)
}

pub fn build_records(n: usize) -> anyhow::Result<(Vec<DeviceRecord>, usize)> {
    let rules = TwinRules::default();
    let now = Timestamp::now();
    let plants = (n / 100).max(1);
    let mut rng = Rng(0x7417_4B0B);
    let mut records = Vec::with_capacity(n);
    let mut section_bytes = 0usize;
    for i in 0..n {
        let id = format!("device-{i:07}");
        let (tags, desired, reported) = twin_sections(i, plants, &mut rng);
        let patch = json!({"tags": tags, "properties": {"desired": desired}});
        section_bytes += patch.to_string().len() + reported.to_string().len();
        let draft = DeviceDraft::from_json(&json!({ "deviceId": id }), "deviceId")
            .map_err(|e| anyhow::anyhow!("device {id}: {e:?}"))?;
        let twin = Twin::new(now)
            .patched(
                &TwinPatch::from_json(&patch, &rules).map_err(|e| anyhow::anyhow!("{e:?}"))?,
                now,
                &rules,
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .0
            .with_reported(
                &ReportedPatch::from_json(&reported, &rules).map_err(|e| anyhow::anyhow!("{e:?}"))?,
                now,
                &rules,
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        records.push(DeviceRecord::new(
            draft.into_identity(None, now, |_| None).expect("no edge scopes"),
            twin,
            Presence::default(),
        ));
    }
    Ok((records, section_bytes / n.max(1)))
}
