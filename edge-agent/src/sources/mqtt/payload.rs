//! MQTT payload formats: what a message's bytes say, as rows of device resources.

use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value as Json;
use twinlake_sdk::json::from_json;
use twinlake_sdk::pson::Value;

use super::sparkplug::{Aliases, Topic as SparkplugTopic};
use super::topic::Captures;
use crate::event::SourceRow;
use crate::sources::codec::Codec;
use crate::sources::parse_rfc3339;
use crate::sources::telemetry::{MAX_MS, ms, plain, storable, thingsboard};

/// How a subscription's payloads are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A JSON object (flattened into columns like a PSON payload), a scalar (`value`), or
    /// an array of those (a row each).
    #[default]
    Json,
    /// A PSON value, as Thinger devices encode it.
    Pson,
    /// A number, `true`/`false`, or else text.
    Plain,
    /// Sparkplug B protobuf on `spBv1.0/…` topics; the device is the Sparkplug device (or
    /// the edge node for N* messages).
    Sparkplug,
    /// ThingsBoard device telemetry: `{"k":v}`, `{"ts":ms,"values":{…}}`, or arrays of them.
    Thingsboard,
    /// ThingsBoard gateway telemetry (`v1/gateway/telemetry`): `{"Device A":[{"ts":…,"values":{…}}]}`.
    ThingsboardGateway,
    /// ChirpStack v4 application `event/up` JSON: the device is `deviceInfo.devEui`;
    /// `object` (or else `data` through Cayenne LPP) plus the radio metadata.
    Chirpstack,
}

impl Format {
    /// The resource rows go to when the topic names none.
    pub fn default_resource(self) -> &'static str {
        match self {
            Self::Sparkplug => "sparkplug",
            Self::Chirpstack => "lorawan",
            _ => "telemetry",
        }
    }

    /// Whether the payload names its devices (so the topic need not).
    pub fn names_devices(self) -> bool {
        matches!(self, Self::Sparkplug | Self::ThingsboardGateway | Self::Chirpstack)
    }
}

/// State some formats keep between messages (Sparkplug aliases).
#[derive(Debug, Default)]
pub struct Decoder {
    aliases: Aliases,
}

impl Decoder {
    /// Reads one message. `captures` are what the subscription's template took from the
    /// topic; `resource` is the subscription's resource (or the format's default).
    pub fn decode(
        &mut self,
        format: Format,
        topic: &str,
        captures: &Captures<'_>,
        resource: &str,
        bytes: &[u8],
        now: SystemTime,
    ) -> Result<Vec<SourceRow>, String> {
        let resource = captures.resource.unwrap_or(resource);
        let device = captures.device;
        let row = |device: &str, at: SystemTime, payload: Value| SourceRow {
            device: device.to_owned(),
            resource: resource.to_owned(),
            at,
            payload,
        };
        let need_device =
            || device.ok_or_else(|| format!("topic {topic:?} names no device (add {{device}} to the template)"));
        match format {
            Format::Json => {
                let d = need_device()?;
                let j: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
                match j {
                    Json::Array(items) => items.iter().map(|i| Ok(row(d, now, storable(from_json(i))?))).collect(),
                    other => Ok(vec![row(d, now, storable(from_json(&other))?)]),
                }
            }
            Format::Pson => {
                let d = need_device()?;
                let v = Value::decode(bytes).map_err(|e| format!("not PSON: {e}"))?;
                Ok(vec![row(d, now, v)])
            }
            Format::Plain => {
                let d = need_device()?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| "not UTF-8 text".to_owned())?
                    .trim();
                let v = plain(text);
                Ok(vec![row(d, now, v)])
            }
            Format::Thingsboard => {
                let d = need_device()?;
                let j: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
                let mut out = Vec::new();
                thingsboard(&j, now, &mut |at, v| out.push(row(d, at, v)))?;
                Ok(out)
            }
            Format::ThingsboardGateway => {
                let j: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
                let obj = j.as_object().ok_or("gateway telemetry must be an object of devices")?;
                let mut out = Vec::new();
                for (dev, entries) in obj {
                    thingsboard(entries, now, &mut |at, v| out.push(row(dev, at, v)))?;
                }
                Ok(out)
            }
            Format::Sparkplug => {
                let t = SparkplugTopic::parse(topic).ok_or_else(|| format!("{topic:?} is not a Sparkplug B topic"))?;
                let dev = t.device.unwrap_or(t.node);
                let (_, samples) = self.aliases.decode(&t, bytes)?;
                if !matches!(t.kind, "NBIRTH" | "DBIRTH" | "NDATA" | "DDATA") {
                    return Ok(Vec::new());
                }
                // One row per timestamp, the metrics of that time as its columns.
                let mut rows: Vec<SourceRow> = Vec::new();
                for s in samples {
                    let at = match s.at_ms {
                        None => now,
                        Some(t) if t <= MAX_MS => ms(t),
                        Some(t) => return Err(format!("metric timestamp {t} is past what the lake holds")),
                    };
                    match rows.iter_mut().find(|r| r.at == at) {
                        Some(r) => {
                            let p = std::mem::take(&mut r.payload);
                            r.payload = p.with(s.name.as_str(), s.value);
                        }
                        None => rows.push(row(dev, at, Value::object().with(s.name.as_str(), s.value))),
                    }
                }
                Ok(rows)
            }
            Format::Chirpstack => {
                let j: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
                chirpstack(&j, resource, now).map(|r| vec![r])
            }
        }
    }
}

/// A ChirpStack v4 `event/up`.
fn chirpstack(j: &Json, resource: &str, now: SystemTime) -> Result<SourceRow, String> {
    let dev_eui = j
        .pointer("/deviceInfo/devEui")
        .and_then(Json::as_str)
        .ok_or("no deviceInfo.devEui (is this a ChirpStack v4 event/up?)")?;
    let at = j
        .get("time")
        .and_then(Json::as_str)
        .and_then(parse_rfc3339)
        .unwrap_or(now);
    let mut row = match j.get("object") {
        Some(o @ Json::Object(_)) => from_json(o),
        _ => match j.get("data").and_then(Json::as_str) {
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("data is not base64: {e}"))?;
                Codec::Cayenne
                    .decode(&bytes)
                    .unwrap_or_else(|_| Value::object().with("payload", Value::Bytes(bytes)))
            }
            None => Value::object(),
        },
    };
    for (k, col) in [("fCnt", "f_cnt"), ("fPort", "f_port"), ("dr", "data_rate")] {
        if let Some(v) = j.get(k).and_then(Json::as_i64) {
            row = row.with(col, Value::Int(v));
        }
    }
    // The best gateway's reception.
    let best = j.get("rxInfo").and_then(Json::as_array).and_then(|rx| {
        rx.iter()
            .max_by(|a, b| {
                let s = |x: &Json| x.get("rssi").and_then(Json::as_f64).unwrap_or(f64::MIN);
                s(a).total_cmp(&s(b))
            })
            .cloned()
    });
    if let Some(rx) = best {
        if let Some(v) = rx.get("rssi").and_then(Json::as_f64) {
            row = row.with("rssi", Value::Double(v));
        }
        if let Some(v) = rx.get("snr").and_then(Json::as_f64) {
            row = row.with("snr", Value::Double(v));
        }
        if let Some(v) = rx.get("gatewayId").and_then(Json::as_str) {
            row = row.with("lora_gateway", Value::Str(v.to_owned()));
        }
    }
    if let Some(f) = j.pointer("/txInfo/frequency").and_then(Json::as_i64) {
        row = row.with("frequency", Value::Int(f));
    }
    Ok(SourceRow {
        device: dev_eui.to_ascii_lowercase(),
        resource: resource.to_owned(),
        at,
        payload: row,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::sources::mqtt::topic::TopicTemplate;

    fn run(format: Format, template: &str, topic: &str, bytes: &[u8]) -> Result<Vec<SourceRow>, String> {
        let t = TopicTemplate::parse(template).unwrap();
        let c = t.captures(topic).unwrap();
        Decoder::default().decode(format, topic, &c, format.default_resource(), bytes, ms(5))
    }

    /// Times past the lake's i64 microseconds are refused, not wrapped into garbage (found
    /// by the `mqtt_payload` fuzz target with a Sparkplug metric timestamp).
    #[test]
    fn times_past_the_lake_are_refused() {
        let tb = format!(r#"{{"ts":{},"values":{{"a":1}}}}"#, u64::MAX);
        assert!(run(Format::Thingsboard, "tb/{device}/#", "tb/d/t", tb.as_bytes()).is_err());
        let ok = format!(r#"{{"ts":{MAX_MS},"values":{{"a":1}}}}"#);
        assert!(run(Format::Thingsboard, "tb/{device}/#", "tb/d/t", ok.as_bytes()).is_ok());
    }

    #[test]
    fn formats() {
        let r = run(
            Format::Json,
            "s/{device}/{resource}",
            "s/d1/climate",
            br#"{"temp":21.5,"hum":40}"#,
        )
        .unwrap();
        assert_eq!((r[0].device.as_str(), r[0].resource.as_str()), ("d1", "climate"));
        assert_eq!(r[0].payload.get("temp").and_then(Value::as_f64), Some(21.5));
        let r = run(Format::Plain, "s/{device}/{resource}", "s/d1/t", b" 42 ").unwrap();
        assert_eq!(r[0].payload, Value::Int(42));
        let r = run(Format::Plain, "s/{device}/{resource}", "s/d1/t", b"on").unwrap();
        assert_eq!(r[0].payload, Value::Str("on".into()));
        let r = run(Format::Pson, "s/{device}/#", "s/d1/x", &Value::Int(7).to_bytes()).unwrap();
        assert_eq!((r[0].resource.as_str(), &r[0].payload), ("telemetry", &Value::Int(7)));
        let r = run(
            Format::Thingsboard,
            "tb/{device}/#",
            "tb/d2/v1/devices/me/telemetry",
            br#"[{"ts":1451649600512,"values":{"a":1}},{"b":2}]"#,
        )
        .unwrap();
        assert_eq!(r[0].at, ms(1_451_649_600_512));
        assert_eq!(r[1].at, ms(5));
        let r = run(
            Format::ThingsboardGateway,
            "v1/gateway/telemetry",
            "v1/gateway/telemetry",
            br#"{"Device A":[{"ts":1000000000000,"values":{"t":1}}],"Device B":[{"ts":1000000000001,"values":{"t":2}}]}"#,
        )
        .unwrap();
        assert_eq!((r[0].device.as_str(), r[1].device.as_str()), ("Device A", "Device B"));
        let up = br#"{"deduplicationId":"x","time":"2024-01-01T12:00:00.5Z","deviceInfo":{"devEui":"0004A30B001C0530"},
            "devAddr":"26011bda","fCnt":42,"fPort":2,"dr":5,"data":"A2cBEA==",
            "rxInfo":[{"gatewayId":"aa","rssi":-80,"snr":2.5},{"gatewayId":"bb","rssi":-57,"snr":9.5}],
            "txInfo":{"frequency":868500000}}"#;
        let r = run(
            Format::Chirpstack,
            "application/+/device/+/event/up",
            "application/1/device/2/event/up",
            up,
        )
        .unwrap();
        assert_eq!(r[0].device, "0004a30b001c0530");
        assert_eq!(r[0].at, ms(1_704_110_400_500));
        let p = &r[0].payload;
        assert_eq!(p.get("temperature_3"), Some(&Value::Double(27.2)));
        assert_eq!(p.get("lora_gateway"), Some(&Value::Str("bb".into())));
        assert_eq!(p.get("f_cnt"), Some(&Value::Int(42)));
        assert_eq!(p.get("frequency"), Some(&Value::Int(868_500_000)));
    }

    #[test]
    fn bad_payloads_say_why() {
        assert!(
            run(Format::Json, "s/{device}", "s/d", b"{")
                .unwrap_err()
                .contains("JSON")
        );
        assert!(run(Format::Json, "s/+", "s/d", b"1").unwrap_err().contains("no device"));
        assert!(run(Format::Pson, "s/{device}", "s/d", &[0xff]).is_err());
        assert!(run(Format::Plain, "s/{device}", "s/d", &[0xff]).is_err());
        assert!(run(Format::Thingsboard, "s/{device}", "s/d", br#"{"ts":"x","values":{}}"#).is_err());
        assert!(run(Format::Chirpstack, "s/#", "s/d", br#"{}"#).is_err());
        assert!(run(Format::Sparkplug, "s/#", "s/d", b"").is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(ms(1000)));
        assert_eq!(
            parse_rfc3339("2024-01-01T12:00:00.000000Z"),
            Some(ms(1_704_110_400_000))
        );
        assert_eq!(parse_rfc3339("2024-01-01 12:00:00 GMT"), None);
    }
}
