//! An alarm and its lifecycle: raised active, acknowledged by a person, cleared by its rule
//! or a person. At most one open (active or acknowledged) alarm per (rule, key); a rule
//! that raises again while one is open counts a repeat on it.

use serde::{Deserialize, Serialize};

use crate::RuleError;
use crate::model::Severity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    Active,
    Acknowledged,
    Cleared,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Acknowledged => "acknowledged",
            Self::Cleared => "cleared",
        }
    }
}

/// One alarm, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub id: u64,
    pub owner: String,
    pub rule: String,
    /// The rule's kind: `threshold`, `deadman`, `twin`, `sql`, or `gateway` (gateway-raised).
    pub kind: String,
    /// What it is about: the device, or a scheduled SQL rule's key values (`a/b`).
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub severity: Severity,
    pub state: AlarmState,
    /// When the condition first held long enough (event time, ms since the epoch).
    pub raised_at: u64,
    /// The last raise, repeat, acknowledgement or clear.
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<u64>,
    /// `rule` when its condition ended, else who cleared it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<String>,
    /// Raises while open, the first included.
    pub count: u64,
    /// The value that raised (or last repeated) it, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub message: String,
}

impl Alarm {
    /// Active or acknowledged.
    pub fn is_open(&self) -> bool {
        self.state != AlarmState::Cleared
    }

    /// The rule raised again while it is open.
    pub fn repeat(&mut self, at: u64, value: Option<f64>) {
        self.count += 1;
        self.updated_at = self.updated_at.max(at);
        if value.is_some() {
            self.value = value;
        }
    }

    pub fn acknowledge(&mut self, at: u64, by: &str) -> Result<(), RuleError> {
        match self.state {
            AlarmState::Active => {
                self.state = AlarmState::Acknowledged;
                self.acknowledged_at = Some(at);
                self.acknowledged_by = Some(by.to_owned());
                self.updated_at = self.updated_at.max(at);
                Ok(())
            }
            AlarmState::Acknowledged => Err(RuleError::State("acknowledged", "acknowledge it once")),
            AlarmState::Cleared => Err(RuleError::State("cleared", "a cleared alarm stays cleared")),
        }
    }

    pub fn clear(&mut self, at: u64, by: &str) -> Result<(), RuleError> {
        if !self.is_open() {
            return Err(RuleError::State("cleared", "a cleared alarm stays cleared"));
        }
        self.state = AlarmState::Cleared;
        self.cleared_at = Some(at);
        self.cleared_by = Some(by.to_owned());
        self.updated_at = self.updated_at.max(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm() -> Alarm {
        Alarm {
            id: 1,
            owner: "u".into(),
            rule: "r".into(),
            kind: "threshold".into(),
            key: "d".into(),
            device: Some("d".into()),
            severity: Severity::Major,
            state: AlarmState::Active,
            raised_at: 10,
            updated_at: 10,
            acknowledged_at: None,
            acknowledged_by: None,
            cleared_at: None,
            cleared_by: None,
            count: 1,
            value: Some(36.0),
            message: String::new(),
        }
    }

    #[test]
    fn the_lifecycle_goes_one_way() {
        let mut a = alarm();
        a.repeat(20, Some(37.0));
        assert_eq!((a.count, a.value, a.updated_at), (2, Some(37.0), 20));
        a.acknowledge(30, "alice").unwrap();
        assert!(a.acknowledge(31, "alice").is_err());
        assert!(a.is_open());
        a.clear(40, "rule").unwrap();
        assert!(!a.is_open());
        assert!(a.clear(41, "bob").is_err() && a.acknowledge(42, "bob").is_err());
        assert_eq!((a.cleared_at, a.cleared_by.as_deref()), (Some(40), Some("rule")));
    }

    #[test]
    fn an_active_alarm_can_be_cleared_without_acknowledging() {
        let mut a = alarm();
        a.clear(15, "alice").unwrap();
        assert_eq!(a.state, AlarmState::Cleared);
        assert_eq!(a.acknowledged_at, None);
    }
}
