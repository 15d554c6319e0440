//! Alarms in the database: a rule's transitions and a person's acknowledgements and clears,
//! each stored with its event and its actions' jobs in one transaction.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde_json::{Value as Json, json};
use tracing::{info, warn};
use twinlake_rules::{Alarm, AlarmState, Rule, RuleError, Transition};
use twinlake_twin::{EventKind, TwinKey, TwinTxn};

use crate::Error;
use crate::state::AppState;
use crate::store::{ALARMS, GATEWAY_ALARM_KEYS, OPEN_ALARMS, WebhookJob, decode, encode};

fn open_key(owner: &str, rule: &str, key: &str) -> String {
    format!("{owner}/{rule}/{key}")
}

/// What happened to an alarm, as events and webhook payloads say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raised,
    Repeated,
    Acknowledged,
    Cleared,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raised => "raised",
            Self::Repeated => "repeated",
            Self::Acknowledged => "acknowledged",
            Self::Cleared => "cleared",
        }
    }
}

/// The alarm as served, with what just happened to it.
pub fn to_json(a: &Alarm, change: Option<Change>) -> Json {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let (Some(c), Some(o)) = (change, v.as_object_mut()) {
        o.insert("change".into(), c.as_str().into());
    }
    v
}

/// Which delivery queues got work in a transaction: woken once it commits (woken before,
/// a sender could look, find nothing, and sleep on the job).
#[derive(Debug, Default, Clone, Copy)]
struct Wake {
    webhook: bool,
    email: bool,
    mqtt: bool,
}

impl Wake {
    fn or(self, o: Self) -> Self {
        Self {
            webhook: self.webhook || o.webhook,
            email: self.email || o.email,
            mqtt: self.mqtt || o.mqtt,
        }
    }

    fn notify(self, state: &AppState) {
        if self.webhook {
            state.webhook_wake.notify_one();
        }
        if self.email {
            state.email_wake.notify_one();
        }
        if self.mqtt {
            state.mqtt_wake.notify_one();
        }
    }
}

/// Stores `transitions` (each with its rule) and runs their actions' first step (queueing).
pub fn record(state: &AppState, transitions: Vec<(Arc<Rule>, Transition)>) -> Result<(), Error> {
    let mut wake = Wake::default();
    state.twins.write(|t| -> Result<(), Error> {
        for (rule, tr) in &transitions {
            wake = wake.or(apply(state, t, rule, tr)?);
        }
        trim(state, t.transaction())
    })?;
    wake.notify(state);
    Ok(())
}

/// [`record`] for transitions that may come twice (a gateway's): each keyed one is applied
/// only the first time, in the same transaction that records its key.
pub fn record_once(state: &AppState, transitions: Vec<(String, Arc<Rule>, Transition)>) -> Result<(), Error> {
    let mut wake = Wake::default();
    state.twins.write(|t| -> Result<(), Error> {
        let now = twinlake_twin::now_ms();
        for (key, rule, tr) in &transitions {
            let fresh = t
                .transaction()
                .open_table(GATEWAY_ALARM_KEYS)?
                .insert(key.as_str(), now)?
                .is_none();
            if fresh {
                wake = wake.or(apply(state, t, rule, tr)?);
            }
        }
        let evicted = trim_keys(t.transaction(), now, MAX_GATEWAY_KEYS)?;
        state.metrics.gateway_alarm_keys_evicted.inc_by(evicted);
        trim(state, t.transaction())
    })?;
    wake.notify(state);
    Ok(())
}

/// The most keys of gateway transitions kept.
const MAX_GATEWAY_KEYS: u64 = 100_000;

/// Keys of gateway transitions: past `max`, those taken over a week ago go (a file comes
/// within days of its rows, or not at all). A gateway that sent more than `max` within a
/// week (a hostile or broken one) does not grow the table further: the oldest keys go, down
/// to nine tenths of `max` so that the scan is rare, and their count is returned. A
/// transition whose key went and that comes again is applied again (an alarm counted twice).
fn trim_keys(tx: &redb::WriteTransaction, now: u64, max: u64) -> Result<u64, Error> {
    let mut t = tx.open_table(GATEWAY_ALARM_KEYS)?;
    if t.len()? <= max {
        return Ok(0);
    }
    let week = 7 * 24 * 3600 * 1000;
    t.retain(|_, taken| taken.saturating_add(week) > now)?;
    let len = t.len()?;
    if len <= max {
        return Ok(0);
    }
    let mut by_age = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for e in t.iter()? {
        let (k, taken) = e?;
        by_age.push((taken.value(), k.value().to_owned()));
    }
    by_age.sort_unstable();
    let excess = len - max * 9 / 10;
    for (_, k) in by_age.iter().take(usize::try_from(excess).unwrap_or(usize::MAX)) {
        t.remove(k.as_str())?;
    }
    Ok(excess)
}

/// One transition, and the queues it gave work.
fn apply(state: &AppState, t: &mut TwinTxn<'_>, rule: &Rule, tr: &Transition) -> Result<Wake, Error> {
    let ok = open_key(&rule.owner, &rule.id, tr.key());
    let open_id = t
        .transaction()
        .open_table(OPEN_ALARMS)?
        .get(ok.as_str())?
        .map(|v| v.value());
    let existing = match open_id {
        Some(id) => load(t.transaction(), id)?,
        None => None,
    };
    let (alarm, change) = match (tr, existing) {
        (Transition::Raise { at, value, .. }, Some(mut a)) => {
            a.repeat(*at, *value);
            (a, Change::Repeated)
        }
        (
            Transition::Raise {
                at,
                value,
                message,
                key,
                ..
            },
            None,
        ) => {
            let id = t
                .transaction()
                .open_table(ALARMS)?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1);
            t.transaction().open_table(OPEN_ALARMS)?.insert(ok.as_str(), id)?;
            state.metrics.alarms_raised.inc();
            info!(owner = %rule.owner, rule = %rule.id, key = %key, %message, "alarm raised");
            let device = rule.when.is_per_device().then(|| key.clone());
            let a = Alarm {
                id,
                owner: rule.owner.clone(),
                rule: rule.id.clone(),
                kind: rule.when.name().into(),
                key: key.clone(),
                device,
                severity: rule.severity,
                state: AlarmState::Active,
                raised_at: *at,
                updated_at: *at,
                acknowledged_at: None,
                acknowledged_by: None,
                cleared_at: None,
                cleared_by: None,
                count: 1,
                value: *value,
                message: message.clone(),
            };
            (a, Change::Raised)
        }
        (Transition::Clear { at, value, message, .. }, Some(mut a)) => {
            if a.clear(*at, "rule").is_err() {
                return Ok(Wake::default());
            }
            if value.is_some() {
                a.value = *value;
            }
            a.message = format!("{}; cleared: {message}", a.message);
            t.transaction().open_table(OPEN_ALARMS)?.remove(ok.as_str())?;
            state.metrics.alarms_cleared.inc();
            (a, Change::Cleared)
        }
        (Transition::Clear { .. }, None) => return Ok(Wake::default()),
    };
    store(t, &alarm, change)?;
    let queued = match change {
        Change::Raised => actions(state, t, rule, &alarm, true)?,
        Change::Cleared => actions(state, t, rule, &alarm, false)?,
        Change::Repeated | Change::Acknowledged => Wake::default(),
    };
    Ok(queued)
}

fn load(tx: &redb::WriteTransaction, id: u64) -> Result<Option<Alarm>, Error> {
    let t = tx.open_table(ALARMS)?;
    let v = t.get(id)?;
    v.map(|v| decode("alarms", &id.to_string(), v.value())).transpose()
}

/// Writes the alarm and announces the change on the event streams.
fn store(t: &mut TwinTxn<'_>, a: &Alarm, change: Change) -> Result<(), Error> {
    t.transaction().open_table(ALARMS)?.insert(a.id, encode(a).as_slice())?;
    let key = TwinKey::new(&a.owner, a.device.as_deref().unwrap_or(&a.key));
    t.announce(
        &key,
        EventKind::Alarm,
        a.updated_at,
        json!({ "alarm": to_json(a, Some(change)) }),
    );
    Ok(())
}

/// Past `rules.max_alarms`, the oldest cleared alarms go (open ones stay).
fn trim(state: &AppState, tx: &redb::WriteTransaction) -> Result<(), Error> {
    let mut t = tx.open_table(ALARMS)?;
    while t.len()? > state.cfg.rules.max_alarms {
        let Some((id, cleared)) = t.first()?.map(|(k, v)| {
            let cleared = decode::<Alarm>("alarms", "", v.value()).is_ok_and(|a| !a.is_open());
            (k.value(), cleared)
        }) else {
            break;
        };
        if !cleared {
            break;
        }
        t.remove(id)?;
    }
    Ok(())
}

/// Queues the rule's actions for a raise (`raised`) or a clear. A device action names the
/// owner's device: a rule cannot touch another user's.
fn actions(state: &AppState, t: &mut TwinTxn<'_>, rule: &Rule, a: &Alarm, raised: bool) -> Result<Wake, Error> {
    let mut queued = Wake::default();
    let change = if raised { Change::Raised } else { Change::Cleared };
    for action in rule.actions.iter().filter(|x| x.on.on(raised)) {
        if let Some(endpoint) = &action.webhook {
            let job = WebhookJob {
                user: rule.owner.clone(),
                device: a.device.clone().unwrap_or_default(),
                endpoint: endpoint.clone(),
                at: twinlake_twin::now_ms(),
                payload: Some(to_json(a, Some(change))),
                attempts: 0,
            };
            crate::webhook::enqueue(state, t.transaction(), &job)?;
            state.metrics.rule_actions.get_or_create(&action_label("webhook")).inc();
            queued.webhook = true;
        }
        if let Some(to) = &action.email {
            crate::rules::email::enqueue(state, t.transaction(), to, a, change)?;
            state.metrics.rule_actions.get_or_create(&action_label("email")).inc();
            queued.email = true;
        }
        if let Some(topic) = &action.mqtt {
            crate::rules::mqtt::enqueue(state, t.transaction(), topic, a, change)?;
            state.metrics.rule_actions.get_or_create(&action_label("mqtt")).inc();
            queued.mqtt = true;
        }
        if let Some(desired) = &action.desired {
            let Some(device) = action.device.as_ref().or(a.device.as_ref()) else {
                continue;
            };
            let key = TwinKey::new(&rule.owner, device);
            match t.patch_desired(&key, desired, None) {
                Ok(_) => {
                    state.metrics.rule_actions.get_or_create(&action_label("desired")).inc();
                }
                Err(e) => {
                    state
                        .metrics
                        .rule_actions
                        .get_or_create(&action_label("desired_failed"))
                        .inc();
                    warn!(owner = %rule.owner, rule = %rule.id, %device, error = %e, "a rule's desired action failed");
                }
            }
        }
    }
    Ok(queued)
}

fn action_label(kind: &str) -> Vec<(String, String)> {
    crate::metrics::label("action", kind)
}

/// The user's alarms, newest first, optionally only those in `state`; at most `limit`.
pub fn list(
    state: &AppState,
    owner: Option<&str>,
    only: Option<AlarmState>,
    limit: usize,
) -> Result<Vec<Alarm>, Error> {
    select(&state.db, owner, only, true, limit)
}

/// Every stored alarm (the `alarms` SQL table), optionally one user's, oldest first.
pub fn all(db: &crate::store::Db, owner: Option<&str>) -> Result<Vec<Alarm>, Error> {
    select(db, owner, None, false, usize::MAX)
}

fn select(
    db: &crate::store::Db,
    owner: Option<&str>,
    only: Option<AlarmState>,
    newest_first: bool,
    limit: usize,
) -> Result<Vec<Alarm>, Error> {
    let tx = db.0.begin_read()?;
    let t = tx.open_table(ALARMS)?;
    let entries = t.iter()?;
    let entries: Box<dyn Iterator<Item = _>> = if newest_first {
        Box::new(entries.rev())
    } else {
        Box::new(entries)
    };
    let mut out = Vec::new();
    for entry in entries {
        let (k, v) = entry?;
        let a: Alarm = decode("alarms", &k.value().to_string(), v.value())?;
        if owner.is_some_and(|o| o != a.owner) || only.is_some_and(|s| s != a.state) {
            continue;
        }
        out.push(a);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// What a person did to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Acknowledge,
    Clear,
}

/// Why an operation on an alarm failed.
#[derive(Debug)]
pub enum OpError {
    NotFound,
    State(RuleError),
    Storage(Error),
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        Self::Storage(e)
    }
}

impl From<twinlake_twin::TwinError> for OpError {
    fn from(e: twinlake_twin::TwinError) -> Self {
        Self::Storage(e.into())
    }
}

/// Acknowledges or clears `owner`'s alarm `id` as `by`. A clear ends the open alarm: the
/// rule starts over for its key and raises a new one if its condition holds again.
pub fn operate(state: &AppState, owner: &str, id: u64, op: Operation, by: &str) -> Result<Alarm, OpError> {
    let rules = state.rules.current();
    let (alarm, wake) = state.twins.write(|t| -> Result<(Alarm, Wake), OpError> {
        let mut a = load(t.transaction(), id)?
            .filter(|a| a.owner == owner)
            .ok_or(OpError::NotFound)?;
        let now = twinlake_twin::now_ms();
        let change = match op {
            Operation::Acknowledge => {
                a.acknowledge(now, by).map_err(OpError::State)?;
                Change::Acknowledged
            }
            Operation::Clear => {
                a.clear(now, by).map_err(OpError::State)?;
                let key = open_key(owner, &a.rule, &a.key);
                (|| -> Result<(), Error> {
                    t.transaction().open_table(OPEN_ALARMS)?.remove(key.as_str())?;
                    Ok(())
                })()?;
                Change::Cleared
            }
        };
        store(t, &a, change)?;
        let rule = rules.get(&twinlake_rules::scope(owner, &a.rule)).cloned();
        let wake = match (change, rule) {
            (Change::Cleared, Some(rule)) => actions(state, t, &rule, &a, false)?,
            _ => Wake::default(),
        };
        Ok((a, wake))
    })?;
    if op == Operation::Clear {
        state.metrics.alarms_cleared.inc();
        state
            .rules
            .evaluator()
            .reset(&twinlake_rules::scope(owner, &alarm.rule), &alarm.key);
    }
    wake.notify(state);
    Ok(alarm)
}

/// Reads one of `owner`'s alarms.
pub fn get(state: &AppState, owner: &str, id: u64) -> Result<Option<Alarm>, Error> {
    let tx = state.db.0.begin_read()?;
    let t = tx.open_table(ALARMS)?;
    let v = t.get(id)?;
    Ok(v.map(|v| decode::<Alarm>("alarms", &id.to_string(), v.value()))
        .transpose()?
        .filter(|a| a.owner == owner))
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;

    use super::*;

    fn db_with_keys(keys: impl IntoIterator<Item = (String, u64)>) -> redb::Database {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(GATEWAY_ALARM_KEYS).unwrap();
            for (k, at) in keys {
                t.insert(k.as_str(), at).unwrap();
            }
        }
        tx.commit().unwrap();
        db
    }

    /// A hostile gateway that sends more distinct alarm transitions within a week than the
    /// cap does not grow the keys table past it: the oldest keys go, and are counted.
    #[test]
    fn a_gateway_flooding_alarm_keys_within_a_week_is_capped() {
        let now = 10_000_000_000;
        let db = db_with_keys((0..150u64).map(|i| (format!("gw/o/r/d{i}/raised/{i}"), now - 150 + i)));
        let tx = db.begin_write().unwrap();
        assert_eq!(trim_keys(&tx, now, 100).unwrap(), 60);
        let t = tx.open_table(GATEWAY_ALARM_KEYS).unwrap();
        assert_eq!(t.len().unwrap(), 90);
        assert!(t.get("gw/o/r/d59/raised/59").unwrap().is_none(), "the oldest went");
        assert!(t.get("gw/o/r/d60/raised/60").unwrap().is_some(), "the newest stay");
    }

    /// Under the cap nothing goes; over it, keys a week old go first and, if that is
    /// enough, nothing newer does.
    #[test]
    fn keys_a_week_old_go_before_newer_ones() {
        let now = 10_000_000_000;
        let week = 7 * 24 * 3600 * 1000;
        let old = (0..60u64).map(|i| (format!("old{i}"), now - week - 1));
        let new = (0..60u64).map(|i| (format!("new{i}"), now - i));
        let db = db_with_keys(old.chain(new));
        let tx = db.begin_write().unwrap();
        assert_eq!(trim_keys(&tx, now, 200).unwrap(), 0);
        assert_eq!(tx.open_table(GATEWAY_ALARM_KEYS).unwrap().len().unwrap(), 120);
        assert_eq!(trim_keys(&tx, now, 100).unwrap(), 0, "the week-old ones were enough");
        assert_eq!(tx.open_table(GATEWAY_ALARM_KEYS).unwrap().len().unwrap(), 60);
    }
}
