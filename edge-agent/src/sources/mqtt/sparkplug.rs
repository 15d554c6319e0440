//! Sparkplug B payloads (Eclipse Tahu `sparkplug_b.proto`, package
//! `org.eclipse.tahu.protobuf`), decoded with prost.
//!
//! Only the parts a time-series store needs are declared: the payload's timestamp and
//! metrics, each metric's name, alias, timestamp, datatype, null flag and scalar value.
//! Everything else (metadata, properties, data sets, templates) is skipped as unknown
//! fields. Births (NBIRTH, DBIRTH) bind aliases to names per edge node; data messages
//! (NDATA, DDATA) may carry only the alias.

use std::collections::HashMap;

use twinlake_sdk::pson::Value;

/// `Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` (scalar values only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Metric.value` (the scalar members of the oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    Int(u32),
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// Sparkplug datatypes used to read integer values with their sign.
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT64: u32 = 8;
    pub const DATETIME: u32 = 13;
}

/// A Sparkplug topic: `spBv1.0/<group>/<type>/<edge node>[/<device>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub node: &'a str,
    pub device: Option<&'a str>,
}

impl<'a> Topic<'a> {
    /// Parses a topic; `None` if it is not Sparkplug B.
    pub fn parse(topic: &'a str) -> Option<Self> {
        let mut it = topic.split('/');
        if it.next()? != "spBv1.0" {
            return None;
        }
        let (group, kind, node) = (it.next()?, it.next()?, it.next()?);
        let device = it.next();
        if it.next().is_some() || group.is_empty() || node.is_empty() {
            return None;
        }
        Some(Self {
            group,
            kind,
            node,
            device,
        })
    }
}

/// Edge nodes whose aliases are kept, and aliases per node: what brokers' clients send is
/// bounded; past either, a node is forgotten (its next birth teaches it again) or the alias
/// goes unnamed (`alias_<n>`), and both are counted in [`Aliases::evicted`].
pub const MAX_NODES: usize = 10_000;
pub const MAX_ALIASES: usize = 10_000;

/// Aliases per edge node, from its births: alias → (name, datatype).
#[derive(Debug, Default)]
pub struct Aliases {
    nodes: HashMap<(String, String), HashMap<u64, (String, u32)>>,
    /// Nodes forgotten and aliases not kept for the bounds.
    pub evicted: u64,
}

/// One decoded metric value at a time (ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub at_ms: Option<u64>,
    pub value: Value,
}

impl Aliases {
    /// Decodes a message of `topic`: births record aliases (an NBIRTH starts the node
    /// afresh), deaths forget them, data resolves them. Returns the samples.
    pub fn decode(&mut self, topic: &Topic<'_>, bytes: &[u8]) -> Result<(Option<u64>, Vec<Sample>), String> {
        use prost::Message as _;
        let payload = Payload::decode(bytes).map_err(|e| format!("not a Sparkplug B payload: {e}"))?;
        let node = (topic.group.to_owned(), topic.node.to_owned());
        if topic.kind != "NDEATH" && !self.nodes.contains_key(&node) && self.nodes.len() >= MAX_NODES {
            let gone = self.nodes.keys().next().cloned();
            if let Some(k) = gone {
                self.nodes.remove(&k);
                self.evicted += 1;
            }
        }
        match topic.kind {
            "NDEATH" => {
                self.nodes.remove(&node);
                return Ok((payload.timestamp, Vec::new()));
            }
            "NBIRTH" => {
                self.nodes.insert(node.clone(), HashMap::new());
            }
            _ => {}
        }
        let birth = matches!(topic.kind, "NBIRTH" | "DBIRTH");
        let aliases = self.nodes.entry(node).or_default();
        let mut out = Vec::with_capacity(payload.metrics.len());
        for m in payload.metrics {
            if birth && let (Some(a), Some(n)) = (m.alias, &m.name) {
                if aliases.len() < MAX_ALIASES || aliases.contains_key(&a) {
                    aliases.insert(a, (n.clone(), m.datatype.unwrap_or(0)));
                } else {
                    self.evicted += 1;
                }
            }
            let known = m.alias.and_then(|a| aliases.get(&a));
            let name = match (&m.name, known, m.alias) {
                (Some(n), _, _) => n.clone(),
                (None, Some((n, _)), _) => n.clone(),
                (None, None, Some(a)) => format!("alias_{a}"),
                (None, None, None) => continue,
            };
            let dt = m.datatype.or(known.map(|(_, d)| *d)).unwrap_or(0);
            let value = if m.is_null == Some(true) {
                Value::Null
            } else {
                match m.value {
                    Some(v) => scalar(v, dt),
                    None => continue,
                }
            };
            out.push(Sample {
                name,
                at_ms: m.timestamp.or(payload.timestamp),
                value,
            });
        }
        Ok((payload.timestamp, out))
    }
}

fn scalar(v: MetricValue, datatype: u32) -> Value {
    match v {
        MetricValue::Int(i) => match datatype {
            datatype::INT8 => Value::Int(i64::from(i as u8 as i8)),
            datatype::INT16 => Value::Int(i64::from(i as u16 as i16)),
            datatype::INT32 => Value::Int(i64::from(i as i32)),
            _ => Value::Int(i64::from(i)),
        },
        MetricValue::Long(l) => match datatype {
            datatype::INT64 => Value::Int(l as i64),
            datatype::UINT64 if l > i64::MAX as u64 => Value::Double(l as f64),
            _ => Value::Int(l as i64),
        },
        MetricValue::Float(f) => Value::Float(f),
        MetricValue::Double(d) => Value::Double(d),
        MetricValue::Boolean(b) => Value::Bool(b),
        MetricValue::String(s) => Value::Str(s),
        MetricValue::Bytes(b) => Value::Bytes(b),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::sources::unhex(s).unwrap()
    }

    /// The spec's vector (npm `sparkplug-payload` 1.0.3): temperature Double 27.2 and
    /// online Boolean true at 1700000000000, seq 1.
    #[test]
    fn decodes_the_spec_vector() {
        let bytes = hex(
            "0880d095ffbc31121f0a0b74656d70657261747572651880d095ffbc31200a693333333333333b40120c0a066f6e6c696e65200b70011801",
        );
        let t = Topic::parse("spBv1.0/plant1/DDATA/gw01/sensor42").unwrap();
        assert_eq!(
            (t.group, t.kind, t.node, t.device),
            ("plant1", "DDATA", "gw01", Some("sensor42"))
        );
        let (ts, samples) = Aliases::default().decode(&t, &bytes).unwrap();
        assert_eq!(ts, Some(1_700_000_000_000));
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "temperature");
        assert_eq!(samples[0].value, Value::Double(27.2));
        assert_eq!(samples[0].at_ms, Some(1_700_000_000_000));
        assert_eq!(samples[1].name, "online");
        assert_eq!(samples[1].value, Value::Bool(true));
    }

    #[test]
    fn births_bind_aliases_for_data() {
        use prost::Message as _;
        let birth = Payload {
            timestamp: Some(1),
            metrics: vec![Metric {
                name: Some("pressure".into()),
                alias: Some(7),
                datatype: Some(datatype::INT16),
                value: Some(MetricValue::Int(0xfffe)),
                ..Default::default()
            }],
            seq: Some(0),
            ..Default::default()
        };
        let data = Payload {
            timestamp: Some(2),
            metrics: vec![Metric {
                alias: Some(7),
                value: Some(MetricValue::Int(0xfffd)),
                ..Default::default()
            }],
            seq: Some(1),
            ..Default::default()
        };
        let mut a = Aliases::default();
        let t = Topic::parse("spBv1.0/g/NBIRTH/n1").unwrap();
        let (_, s) = a.decode(&t, &birth.encode_to_vec()).unwrap();
        assert_eq!(s[0].value, Value::Int(-2));
        let t = Topic::parse("spBv1.0/g/NDATA/n1").unwrap();
        let (_, s) = a.decode(&t, &data.encode_to_vec()).unwrap();
        assert_eq!((s[0].name.as_str(), &s[0].value), ("pressure", &Value::Int(-3)));
        // After a death, the alias is unknown again.
        a.decode(&Topic::parse("spBv1.0/g/NDEATH/n1").unwrap(), &[]).unwrap();
        let (_, s) = a.decode(&t, &data.encode_to_vec()).unwrap();
        assert_eq!(s[0].name, "alias_7");
        assert!(a.decode(&t, &[0xff, 0xff]).is_err());
    }
}

#[cfg(test)]
mod bound_tests {
    use prost::Message as _;

    use super::*;

    fn birth(aliases: std::ops::Range<u64>) -> Vec<u8> {
        Payload {
            metrics: aliases
                .map(|a| Metric {
                    name: Some(format!("m{a}")),
                    alias: Some(a),
                    datatype: Some(10),
                    value: Some(MetricValue::Double(1.0)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Births from clients of a broker cannot grow the alias memory without bound (#13,
    /// finding 11): nodes and aliases per node are capped, and what is not kept is counted.
    #[test]
    fn aliases_are_bounded() {
        let mut a = Aliases::default();
        let t = Topic::parse("spBv1.0/g/NBIRTH/n").unwrap();
        a.decode(&t, &birth(0..MAX_ALIASES as u64 + 5)).unwrap();
        assert_eq!(a.nodes.values().map(HashMap::len).sum::<usize>(), MAX_ALIASES);
        assert_eq!(a.evicted, 5);
        for n in 0..MAX_NODES + 3 {
            let topic = format!("spBv1.0/g/NBIRTH/node{n}");
            a.decode(&Topic::parse(&topic).unwrap(), &birth(0..1)).unwrap();
        }
        assert_eq!(a.nodes.len(), MAX_NODES);
        assert_eq!(a.evicted, 5 + 4);
    }
}
