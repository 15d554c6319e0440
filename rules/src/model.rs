//! Rule definitions as the REST API and the cloud config take them (JSON / TOML), and the
//! checks every definition passes before it is stored: a rule comes from a user, so each
//! string, list and duration is bounded here, where it enters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::RuleError;

/// Bounds on what one rule may hold.
pub const MAX_ID: usize = 64;
pub const MAX_NAME: usize = 128;
pub const MAX_DESCRIPTION: usize = 1024;
pub const MAX_ACTIONS: usize = 8;
pub const MAX_DEVICES: usize = 1000;
pub const MAX_TAGS: usize = 16;
pub const MAX_EMAILS: usize = 16;
pub const MAX_KEY_COLUMNS: usize = 8;
pub const MAX_SQL: usize = 16 * 1024;
pub const MAX_DESIRED_BYTES: usize = 4096;
/// The longest `for`, deadman or twin duration, and scheduled SQL interval.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A rule: when to raise an alarm, how bad it is, and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its name within its owner's rules (from the path).
    #[serde(default)]
    pub id: String,
    /// The user it runs for; it sees only that user's devices (set by the server).
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where it is evaluated: the cloud (none) or a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub when: RuleKind,
    #[serde(default)]
    pub actions: Vec<Action>,
    /// ms since the epoch (set by the server).
    #[serde(default)]
    pub created: u64,
}

fn yes() -> bool {
    true
}

/// A rule's name across owners, `owner/id`: its key in the evaluator and the store.
pub fn scope(owner: &str, id: &str) -> String {
    format!("{owner}/{id}")
}

impl Rule {
    /// [`scope`] of this rule.
    pub fn scope(&self) -> String {
        scope(&self.owner, &self.id)
    }
}

/// How bad an alarm is, from most to least.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Major,
    #[default]
    Minor,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Major => "major",
            Self::Minor => "minor",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// What raises the alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleKind {
    /// A field of a table's rows crosses a value, and stays across it for `for`; the alarm
    /// clears when `clear` holds (hysteresis), or when `raise` no longer does without one.
    Threshold {
        table: String,
        field: String,
        #[serde(default)]
        devices: Selector,
        raise: Condition,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clear: Option<Condition>,
        #[serde(default, rename = "for", with = "humantime_serde")]
        for_: Duration,
    },
    /// No row from a device (in `table`, or any) for `after`. Not raised while the device's
    /// gateway is not linked: that is the gateway's own alarm.
    Deadman {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table: Option<String>,
        #[serde(default)]
        devices: Selector,
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
    /// A device's twin has desired ≠ reported for longer than `after`: it ignores commands.
    Twin {
        #[serde(default)]
        devices: Selector,
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
    /// A gateway of the owner's devices has not been linked to the cloud for `after`: the
    /// alarm a deadman leaves to it (deadman rules do not fire while a gateway is away).
    Gateway {
        gateway: String,
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
    /// A query run every `every`: each row it returns raises (or keeps) an alarm keyed by
    /// the `key` columns; a key no longer returned clears.
    Sql {
        query: String,
        #[serde(with = "humantime_serde")]
        every: Duration,
        key: Vec<String>,
    },
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Threshold { .. } => "threshold",
            Self::Deadman { .. } => "deadman",
            Self::Twin { .. } => "twin",
            Self::Gateway { .. } => "gateway",
            Self::Sql { .. } => "sql",
        }
    }

    /// The table whose rows it judges (threshold rules, and deadman rules with one).
    pub fn table(&self) -> Option<&str> {
        match self {
            Self::Threshold { table, .. } | Self::Deadman { table: Some(table), .. } => Some(table),
            _ => None,
        }
    }

    /// Whether its alarms are about a device (the key is one).
    pub fn is_per_device(&self) -> bool {
        matches!(self, Self::Threshold { .. } | Self::Deadman { .. } | Self::Twin { .. })
    }

    /// The devices it is for (none for scheduled SQL and gateway rules).
    pub fn selector(&self) -> Option<&Selector> {
        match self {
            Self::Threshold { devices, .. } | Self::Deadman { devices, .. } | Self::Twin { devices, .. } => {
                Some(devices)
            }
            Self::Gateway { .. } | Self::Sql { .. } => None,
        }
    }
}

/// Which of the owner's devices a rule is for: those named, and those with all the tags;
/// empty: every device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Json>,
}

impl Selector {
    /// Whether it needs the device's tags to decide.
    pub fn needs_tags(&self) -> bool {
        !self.tags.is_empty()
    }

    /// Whether `device` (with `tags`, when [`Self::needs_tags`]) is selected.
    pub fn matches(&self, device: &str, tags: Option<&Map<String, Json>>) -> bool {
        if !self.devices.is_empty() && !self.devices.iter().any(|d| d == device) {
            return false;
        }
        self.tags
            .iter()
            .all(|(k, v)| tags.and_then(|t| t.get(k)).is_some_and(|have| have == v))
    }
}

/// A comparison of a field's value with a constant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub op: Comparison,
    pub value: f64,
}

impl Condition {
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            Comparison::Gt => v > self.value,
            Comparison::Ge => v >= self.value,
            Comparison::Lt => v < self.value,
            Comparison::Le => v <= self.value,
            Comparison::Eq => v == self.value,
            Comparison::Ne => v != self.value,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

/// When an action runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Raised,
    Cleared,
    #[default]
    Both,
}

impl Trigger {
    pub fn on(self, raised: bool) -> bool {
        matches!(
            (self, raised),
            (Self::Both, _) | (Self::Raised, true) | (Self::Cleared, false)
        )
    }
}

/// One thing to do when an alarm is raised or cleared: exactly one of `webhook` (an
/// endpoint's name), `email` (addresses), `mqtt` (a topic under the owner's prefix) or
/// `desired` (values set in the device's twin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub on: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Json>>,
    /// For `desired`: which of the owner's devices (the alarm's own when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

fn invalid(msg: impl Into<String>) -> RuleError {
    RuleError::Invalid(msg.into())
}

/// Ids and names: 1 to `max` of letters, digits, `-`, `_`, `.`.
pub fn check_name(what: &str, s: &str, max: usize) -> Result<(), RuleError> {
    if (1..=max).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {s:?}: use 1 to {max} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A column or field name: 1 to 128 printable characters.
fn check_field(what: &str, s: &str) -> Result<(), RuleError> {
    if (1..=MAX_NAME).contains(&s.len()) && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(invalid(format!("{what}: 1 to {MAX_NAME} printable characters")))
    }
}

fn check_duration(what: &str, d: Duration, min: Duration) -> Result<(), RuleError> {
    if d < min || d > MAX_DURATION {
        return Err(invalid(format!(
            "{what}: between {} s and {} days",
            min.as_secs_f64(),
            MAX_DURATION.as_secs() / 86_400
        )));
    }
    Ok(())
}

fn check_condition(what: &str, c: &Condition) -> Result<(), RuleError> {
    if !c.value.is_finite() {
        return Err(invalid(format!("{what}: the value must be a finite number")));
    }
    Ok(())
}

impl Selector {
    fn check(&self) -> Result<(), RuleError> {
        if self.devices.len() > MAX_DEVICES || self.tags.len() > MAX_TAGS {
            return Err(invalid(format!(
                "devices: at most {MAX_DEVICES} devices and {MAX_TAGS} tags"
            )));
        }
        for d in &self.devices {
            check_name("device", d, MAX_ID)?;
        }
        for (k, v) in &self.tags {
            check_field("tag", k)?;
            if v.to_string().len() > MAX_NAME {
                return Err(invalid(format!("tag {k}: the value is longer than {MAX_NAME} bytes")));
            }
        }
        Ok(())
    }
}

impl Action {
    fn check(&self) -> Result<(), RuleError> {
        let set = [
            self.webhook.is_some(),
            self.email.is_some(),
            self.mqtt.is_some(),
            self.desired.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(invalid("an action has exactly one of webhook, email, mqtt or desired"));
        }
        if let Some(t) = &self.mqtt {
            check_topic(t)?;
        }
        if let Some(w) = &self.webhook {
            check_name("webhook", w, MAX_ID)?;
        }
        if let Some(to) = &self.email {
            if to.is_empty() || to.len() > MAX_EMAILS {
                return Err(invalid(format!("email: 1 to {MAX_EMAILS} addresses")));
            }
            for a in to {
                check_email(a)?;
            }
        }
        if let Some(d) = &self.desired
            && (d.is_empty() || Json::Object(d.clone()).to_string().len() > MAX_DESIRED_BYTES)
        {
            return Err(invalid(format!("desired: 1 value to {MAX_DESIRED_BYTES} bytes")));
        }
        if let Some(dev) = &self.device {
            if self.desired.is_none() {
                return Err(invalid("device: only with desired"));
            }
            check_name("device", dev, MAX_ID)?;
        }
        Ok(())
    }
}

/// An MQTT topic suffix: 1 to 128 bytes of levels without wildcards, empty levels or
/// control characters (the server puts it under the owner's prefix).
pub fn check_topic(t: &str) -> Result<(), RuleError> {
    let ok = (1..=MAX_NAME).contains(&t.len())
        && !t.chars().any(|c| c.is_control() || c == '+' || c == '#')
        && t.split('/').all(|l| !l.is_empty());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "mqtt: {t:?} is not a topic (1 to {MAX_NAME} bytes, no wildcards or empty levels)"
        )))
    }
}

/// An address as `local@domain`, without spaces, angle brackets or line breaks (what
/// would let a rule add headers or recipients).
pub fn check_email(a: &str) -> Result<(), RuleError> {
    let ok = a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"\\".contains(c))
        && a.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("email: {a:?} is not an address")))
    }
}

impl Rule {
    /// Checks a definition from a user: every bound above, and what each kind needs.
    /// `min_sql_every` is the server's shortest interval for scheduled SQL.
    pub fn check(&self, min_sql_every: Duration) -> Result<(), RuleError> {
        check_name("rule", &self.id, MAX_ID)?;
        if self.description.len() > MAX_DESCRIPTION {
            return Err(invalid(format!("description: at most {MAX_DESCRIPTION} bytes")));
        }
        if let Some(g) = &self.gateway {
            check_name("gateway", g, MAX_ID)?;
        }
        if self.actions.len() > MAX_ACTIONS {
            return Err(invalid(format!("actions: at most {MAX_ACTIONS}")));
        }
        for a in &self.actions {
            a.check()?;
        }
        match &self.when {
            RuleKind::Threshold {
                table,
                field,
                devices,
                raise,
                clear,
                for_,
            } => {
                check_field("table", table)?;
                check_field("field", field)?;
                devices.check()?;
                check_condition("raise", raise)?;
                if let Some(c) = clear {
                    check_condition("clear", c)?;
                }
                check_duration("for", *for_, Duration::ZERO)
            }
            RuleKind::Deadman { table, devices, after } => {
                if let Some(t) = table {
                    check_field("table", t)?;
                }
                devices.check()?;
                check_duration("after", *after, Duration::from_secs(1))
            }
            RuleKind::Twin { devices, after } => {
                devices.check()?;
                check_duration("after", *after, Duration::from_secs(1))
            }
            RuleKind::Gateway { gateway, after } => {
                check_name("gateway", gateway, MAX_ID)?;
                check_duration("after", *after, Duration::from_secs(1))
            }
            RuleKind::Sql { query, every, key } => {
                if query.trim().is_empty() || query.len() > MAX_SQL {
                    return Err(invalid(format!("query: 1 to {MAX_SQL} bytes")));
                }
                check_duration("every", *every, min_sql_every)?;
                if key.is_empty() || key.len() > MAX_KEY_COLUMNS {
                    return Err(invalid(format!("key: 1 to {MAX_KEY_COLUMNS} column names")));
                }
                for k in key {
                    check_field("key", k)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Json) -> Rule {
        let mut r: Rule = serde_json::from_value(v).unwrap();
        r.id = "r1".into();
        r
    }

    #[test]
    fn a_threshold_with_hysteresis_parses_and_checks() {
        let r = parse(serde_json::json!({
            "severity": "major",
            "when": {"type": "threshold", "table": "climate", "field": "temp",
                     "raise": {"op": ">", "value": 35}, "clear": {"op": "<", "value": 33}, "for": "30s"},
            "actions": [{"webhook": "alerts"}, {"on": "raised", "email": ["ops@example.com"]},
                        {"desired": {"fan": true}}]
        }));
        r.check(Duration::from_secs(10)).unwrap();
        let RuleKind::Threshold { for_, .. } = r.when else {
            panic!()
        };
        assert_eq!(for_, Duration::from_secs(30));
    }

    #[test]
    fn bad_definitions_are_refused_with_a_reason() {
        let base = serde_json::json!({"when": {"type": "deadman", "after": "5m"}});
        parse(base.clone()).check(Duration::from_secs(10)).unwrap();
        let cases = [
            serde_json::json!({"when": {"type": "deadman", "after": "0s"}}),
            serde_json::json!({"when": {"type": "deadman", "after": "400days"}}),
            serde_json::json!({"when": {"type": "sql", "query": "select 1", "every": "1s", "key": ["d"]}}),
            serde_json::json!({"when": {"type": "sql", "query": "select 1", "every": "1m", "key": []}}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{}]}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{"webhook": "a", "email": ["x@y.z"]}]}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{"email": ["a@b.c\r\nBcc: x@y.z"]}]}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{"email": ["<a@b.c>"]}]}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m", "devices": {"devices": ["a/b"]}}}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{"mqtt": "a/#"}]}),
            serde_json::json!({"when": {"type": "gateway", "gateway": "a/b", "after": "5m"}}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{"mqtt": "a//b"}]}),
            serde_json::json!({"when": {"type": "deadman", "after": "5m"}, "actions": [{"mqtt": "/a"}]}),
        ];
        for c in cases {
            assert!(parse(c.clone()).check(Duration::from_secs(10)).is_err(), "{c}");
        }
        assert!(
            serde_json::from_value::<Rule>(serde_json::json!({"when": {"type": "deadman", "after": "5m", "x": 1}}))
                .is_err()
        );
        assert!(serde_json::from_value::<Rule>(serde_json::json!({"when": {"type": "threshold", "table": "t", "field": "f", "raise": {"op": "~", "value": 1}}})).is_err());
    }

    #[test]
    fn selectors_match_names_and_tags() {
        let s: Selector = serde_json::from_value(serde_json::json!({"tags": {"site": "north"}})).unwrap();
        let tags = serde_json::json!({"site": "north", "x": 1});
        assert!(s.matches("a", tags.as_object()));
        assert!(!s.matches("a", serde_json::json!({"site": "south"}).as_object()));
        assert!(!s.matches("a", None));
        let s: Selector = serde_json::from_value(serde_json::json!({"devices": ["a"]})).unwrap();
        assert!(s.matches("a", None) && !s.matches("b", None));
        assert!(Selector::default().matches("any", None));
    }
}
