//! Rules the cloud placed on this gateway (`Down::Rules`), evaluated here on the rows
//! ingest makes durable, with the link up or down: the same definitions and evaluator as
//! the cloud's (`twinlake-rules`): threshold rules, and deadman rules (a device of the
//! rule's list, or one seen since, silent for `after` by this gateway's clock; any row
//! clears it), whose silences the ingest task asks for every second.
//!
//! A transition is written to the WAL as a row of [`ALARMS_TABLE`] in the same fsync as the
//! row that caused it, so it survives a crash and reaches the cloud through the link once
//! (the cloud applies each batch once and turns these rows into its alarms). A rule's
//! `desired` actions go out once that fsync has succeeded (an action never runs for an alarm a
//! crash could lose), and are written to the device's inputs by the link client's task,
//! never on ingest's; past [`MAX_ACTIONS`] waiting they are dropped and counted. Actions touch only
//! the device the row came from, or another device of the same user at this gateway.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value as Json, json};
use tokio::sync::mpsc;
use tracing::warn;
use twinlake_lake::model::flatten;
use twinlake_rules::{Evaluator, Rule, RuleKind, Transition};
use twinlake_sdk::pson::ValueRef;

use crate::event::DeviceKey;

/// The table gateway-raised alarm transitions are written to.
pub const ALARMS_TABLE: &str = "gateway_alarms";
/// Device actions waiting at most.
pub const MAX_ACTIONS: usize = 1024;
/// (rule, device) pairs tracked at most.
const MAX_STATES: usize = 100_000;

/// A rule's action for a device: inputs to write.
#[derive(Debug, Clone)]
pub struct DeviceAction {
    pub key: DeviceKey,
    pub inputs: Map<String, Json>,
}

/// The gateway's rules, their evaluator and the queue of device actions.
#[derive(Debug)]
pub struct EdgeRules {
    rules: RwLock<Arc<Vec<Arc<Rule>>>>,
    /// Whether there are any: every durable row asks, without taking the lock.
    any: AtomicBool,
    eval: Mutex<Evaluator>,
    file: PathBuf,
    actions: mpsc::Sender<DeviceAction>,
    receiver: Mutex<Option<mpsc::Receiver<DeviceAction>>>,
    pub dropped_actions: std::sync::atomic::AtomicU64,
    /// When this process started (ms): a deadman watches its listed devices from then.
    started: u64,
}

impl EdgeRules {
    /// The rules saved in `file` by the last link (none if there is none).
    pub fn open(file: PathBuf) -> Self {
        let saved: Vec<Rule> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(MAX_ACTIONS);
        let me = Self {
            rules: RwLock::default(),
            any: AtomicBool::new(false),
            eval: Mutex::new(Evaluator::new(MAX_STATES)),
            file,
            actions: tx,
            receiver: Mutex::new(Some(rx)),
            dropped_actions: Default::default(),
            started: crate::outbox::now_ms(),
        };
        me.set(saved);
        me
    }

    fn set(&self, rules: Vec<Rule>) {
        let kept: Vec<Arc<Rule>> = rules
            .into_iter()
            .filter(|r| r.enabled && matches!(r.when, RuleKind::Threshold { .. } | RuleKind::Deadman { .. }))
            .map(Arc::new)
            .collect();
        let old = self.rules.read().map(|r| r.clone()).unwrap_or_default();
        if let Ok(mut eval) = self.eval.lock() {
            // A rule that changed or went starts over; the same rule sent again (at every
            // link) keeps its state, so a reconnect does not raise its alarm again.
            for r in old.iter() {
                if !kept.iter().any(|k| **k == **r) {
                    eval.forget(&r.scope());
                }
            }
        }
        self.any.store(!kept.is_empty(), Ordering::Relaxed);
        if let Ok(mut r) = self.rules.write() {
            *r = Arc::new(kept);
        }
    }

    /// The cloud's rules for this gateway: used from now on and saved for the next start.
    pub fn replace(&self, rules: Vec<Rule>) {
        let file = self.file.clone();
        if let Ok(bytes) = serde_json::to_vec(&rules) {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::wal::write_file_atomic(&file, &bytes, 0o600) {
                    warn!(path = %file.display(), error = %e, "cannot save the gateway's rules");
                }
            });
        }
        self.set(rules);
    }

    /// The device actions, for the task that runs them (taken once).
    pub fn take_actions(&self) -> Option<mpsc::Receiver<DeviceAction>> {
        self.receiver.lock().ok()?.take()
    }

    /// Judges a row going into the WAL (its PSON `payload`): the alarm rows to write with
    /// it, each with the device actions to run once they are durable ([`Self::dispatch`]).
    pub fn observe(
        &self,
        table: &str,
        (user, device): (&str, &str),
        time_us: i64,
        stream: bool,
        payload: &[u8],
    ) -> Vec<(Json, Vec<DeviceAction>)> {
        if !self.any.load(Ordering::Relaxed) || table == ALARMS_TABLE {
            return Vec::new();
        }
        let rules = self.rules.read().map(|r| r.clone()).unwrap_or_default();
        let Ok(value) = ValueRef::decode(payload) else {
            return Vec::new();
        };
        let mut fields = Vec::new();
        let mut out = Vec::new();
        let at = (time_us.max(0) / 1000) as u64;
        let Ok(mut eval) = self.eval.lock() else {
            return Vec::new();
        };
        for rule in rules.iter().filter(|r| r.owner == user) {
            if !rule.when.selector().is_some_and(|s| s.matches(device, None)) {
                continue;
            }
            let judged = match &rule.when {
                RuleKind::Deadman { table: t, .. } if t.as_deref().is_none_or(|t| t == table) => {
                    eval.seen(&rule.scope(), device, at)
                }
                RuleKind::Threshold { table: t, .. } if t == table => {
                    eval.judge(&rule.scope(), &rule.when, device, at, |field| {
                        if fields.is_empty() {
                            flatten(value, stream, &mut fields);
                        }
                        fields.iter().find(|(k, _)| k == field)?.1.as_f64()
                    })
                }
                _ => None,
            };
            if let Some(tr) = judged {
                out.push((row(rule, &tr), actions(rule, user, device, &tr)));
            }
        }
        out
    }

    /// Deadman silences at `now` (ms): `(user, device, alarm row, its actions)` for each
    /// raised.
    pub fn silences(&self, now: u64) -> Vec<(String, String, Json, Vec<DeviceAction>)> {
        if !self.any.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let rules = self.rules.read().map(|r| r.clone()).unwrap_or_default();
        let Ok(mut eval) = self.eval.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rule in rules.iter() {
            let RuleKind::Deadman { devices, after, .. } = &rule.when else {
                continue;
            };
            let scope = rule.scope();
            for d in &devices.devices {
                eval.watch(&scope, d, rule.created.max(self.started));
            }
            for tr in eval.silences(&scope, now, after.as_millis() as u64) {
                let device = match &tr {
                    Transition::Raise { key, .. } | Transition::Clear { key, .. } => key.clone(),
                };
                let acts = actions(rule, &rule.owner, &device, &tr);
                out.push((rule.owner.clone(), device, row(rule, &tr), acts));
            }
        }
        out
    }

    /// Queues device actions whose alarm rows are durable, for the link client's task.
    pub fn dispatch(&self, actions: Vec<DeviceAction>) {
        for action in actions {
            if self.actions.try_send(action).is_err() {
                self.dropped_actions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The device actions of a rule's transition.
fn actions(rule: &Rule, user: &str, device: &str, tr: &Transition) -> Vec<DeviceAction> {
    let raised = matches!(tr, Transition::Raise { .. });
    rule.actions
        .iter()
        .filter(|a| a.on.on(raised))
        .filter_map(|a| {
            Some(DeviceAction {
                key: DeviceKey::new(user, a.device.as_deref().unwrap_or(device)),
                inputs: a.desired.clone()?,
            })
        })
        .collect()
}

/// The row an alarm transition is written as.
fn row(rule: &Rule, tr: &Transition) -> Json {
    let (change, at, value, message) = match tr {
        Transition::Raise { at, value, message, .. } => ("raised", at, value, message),
        Transition::Clear { at, value, message, .. } => ("cleared", at, value, message),
    };
    json!({"rule": rule.id, "change": change, "at": at, "value": value, "message": message})
}
