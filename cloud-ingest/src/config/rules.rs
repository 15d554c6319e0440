//! `[rules]` (how rules are evaluated, how many alarms are kept) and `[email]` (where alarm
//! emails go).

use std::time::Duration;

use serde::Deserialize;
use twinlake_rules::Rule;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesSection {
    /// How often deadman and twin rules are checked.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Rules per user, at most.
    pub max_per_user: usize,
    /// Alarms kept, open and cleared; past it the oldest cleared ones go.
    pub max_alarms: u64,
    /// (rule, device) pairs tracked at once, at most (past it new ones are counted, not
    /// tracked).
    pub max_states: usize,
    /// The shortest interval a scheduled SQL rule may ask for.
    #[serde(with = "humantime_serde")]
    pub min_sql_every: Duration,
    /// Rules from the config file (each with its `owner`); they cannot be changed through
    /// the API.
    pub fixed: Vec<Rule>,
}

impl Default for RulesSection {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            max_per_user: 1000,
            max_alarms: 100_000,
            max_states: 1_000_000,
            min_sql_every: Duration::from_secs(10),
            fixed: Vec::new(),
        }
    }
}

/// `[email]`: where alarm emails go out. Without `smtp_url`, rules with email actions are
/// refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSection {
    /// `smtp://host:port` (plain, for a local relay), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://user:password@host` (TLS); lettre's URL form.
    pub smtp_url: String,
    /// The sender, e.g. `Twinlake <alarms@example.com>`.
    pub from: String,
    /// Emails sent per minute, at most, whoever they are for (the rest wait in the queue).
    pub max_per_minute: u32,
    /// Attempts per email before it is dropped (counted).
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Emails waiting, at most (the oldest are dropped past it, counted).
    pub max_queued: u64,
}

impl Default for EmailSection {
    fn default() -> Self {
        Self {
            smtp_url: String::new(),
            from: "Twinlake <twinlake@localhost>".into(),
            max_per_minute: 30,
            attempts: 5,
            retry_min: Duration::from_secs(1),
            timeout: Duration::from_secs(15),
            max_queued: 10_000,
        }
    }
}

/// `[mqtt_actions]`: the broker alarm actions publish to (QoS 1, the alarm as JSON, at
/// `<topic_prefix>/<owner>/<the action's topic>`, so users cannot write each other's).
/// Without `url`, rules with mqtt actions are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttActionsSection {
    /// `mqtt://host:1883` (plain TCP: a broker on a private network).
    pub url: String,
    pub client_id: String,
    pub topic_prefix: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    pub max_queued: u64,
}

impl Default for MqttActionsSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: "twinlake-cloud-alarms".into(),
            topic_prefix: "twinlake/alarms".into(),
            timeout: Duration::from_secs(10),
            attempts: 5,
            retry_min: Duration::from_secs(1),
            max_queued: 10_000,
        }
    }
}
