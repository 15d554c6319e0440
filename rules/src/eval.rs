//! Sans-IO evaluation: values come in with their own timestamps (event time: rows that
//! arrive late after an outage are judged at the time they were taken), the clock is an
//! argument, and the answer is a list of [`Transition`]s for the caller to store and act on.
//!
//! State is kept per (rule, key): a key is a device, or a scheduled SQL rule's key values.
//! Its size is bounded ([`Evaluator::new`]); past the bound new keys are not tracked and
//! counted ([`Evaluator::refused`]), since keys come from devices.

use std::collections::HashMap;

use crate::model::{Condition, RuleKind};

/// What the caller stores: an alarm raised or cleared for (rule, key).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Raise {
        rule: String,
        key: String,
        /// Event time, ms since the epoch.
        at: u64,
        value: Option<f64>,
        message: String,
    },
    Clear {
        rule: String,
        key: String,
        at: u64,
        value: Option<f64>,
        message: String,
    },
}

impl Transition {
    pub fn rule(&self) -> &str {
        match self {
            Self::Raise { rule, .. } | Self::Clear { rule, .. } => rule,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Self::Raise { key, .. } | Self::Clear { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Normal,
    /// The raise condition has held since then (a threshold's `for`).
    Pending(u64),
    Active,
}

#[derive(Debug, Clone, Copy)]
struct State {
    phase: Phase,
    /// The latest event time judged (a deadman: the latest row).
    last: u64,
}

impl State {
    fn normal(last: u64) -> Self {
        Self {
            phase: Phase::Normal,
            last,
        }
    }
}

/// Per (rule, key) state, looked up by `&str` without allocating (the ingest path asks for
/// every value).
#[derive(Debug, Default)]
struct States {
    by_rule: HashMap<String, HashMap<String, State>>,
    count: usize,
}

impl States {
    fn get(&self, rule: &str, key: &str) -> Option<&State> {
        self.by_rule.get(rule)?.get(key)
    }

    fn get_mut(&mut self, rule: &str, key: &str) -> Option<&mut State> {
        self.by_rule.get_mut(rule)?.get_mut(key)
    }

    fn contains(&self, rule: &str, key: &str) -> bool {
        self.get(rule, key).is_some()
    }

    fn insert(&mut self, rule: &str, key: &str, s: State) -> &mut State {
        let keys = self.by_rule.entry(rule.to_owned()).or_default();
        if !keys.contains_key(key) {
            self.count += 1;
        }
        keys.entry(key.to_owned()).or_insert(s)
    }

    fn remove(&mut self, rule: &str, key: &str) {
        if let Some(keys) = self.by_rule.get_mut(rule)
            && keys.remove(key).is_some()
        {
            self.count -= 1;
            if keys.is_empty() {
                self.by_rule.remove(rule);
            }
        }
    }

    fn forget(&mut self, rule: &str) {
        if let Some(keys) = self.by_rule.remove(rule) {
            self.count -= keys.len();
        }
    }

    /// The keys of `rule` that are active.
    fn active(&self, rule: &str) -> Vec<String> {
        self.by_rule
            .get(rule)
            .map(|keys| {
                keys.iter()
                    .filter(|(_, s)| s.phase == Phase::Active)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every rule's per-key state.
#[derive(Debug)]
pub struct Evaluator {
    states: States,
    max_states: usize,
    refused: u64,
}

impl Default for Evaluator {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

fn ms(v: u64) -> String {
    format!("{:.3} s", v as f64 / 1000.0)
}

impl Evaluator {
    /// Tracks at most `max_states` (rule, key) pairs.
    pub fn new(max_states: usize) -> Self {
        Self {
            states: States::default(),
            max_states,
            refused: 0,
        }
    }

    /// Keys not tracked because the bound was reached.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// (rule, key) pairs tracked.
    pub fn len(&self) -> usize {
        self.states.count
    }

    pub fn is_empty(&self) -> bool {
        self.states.count == 0
    }

    fn state(&mut self, rule: &str, key: &str, init: State) -> Option<&mut State> {
        if !self.states.contains(rule, key) && self.states.count >= self.max_states {
            self.refused += 1;
            return None;
        }
        Some(self.states.insert(rule, key, init))
    }

    /// An open alarm found at start: its rule clears it when the condition ends.
    pub fn restore(&mut self, rule: &str, key: &str, at: u64) {
        if let Some(s) = self.state(
            rule,
            key,
            State {
                phase: Phase::Active,
                last: at,
            },
        ) {
            s.phase = Phase::Active;
        }
    }

    /// A person cleared the alarm: the rule starts over for that key (a deadman keeps
    /// its last sighting).
    pub fn reset(&mut self, rule: &str, key: &str) {
        if let Some(s) = self.states.get_mut(rule, key) {
            s.phase = Phase::Normal;
        }
    }

    /// A rule was changed or deleted: its state goes.
    pub fn forget(&mut self, rule: &str) {
        self.states.forget(rule);
    }

    /// A threshold rule's value `v` of `key` at `at`. Raises once the raise condition has
    /// held for `for_ms` (judged on the values' own times), clears when `clear` holds (or,
    /// without one, when `raise` no longer does). A value older than one already judged for
    /// the key is ignored.
    pub fn threshold(
        &mut self,
        rule: &str,
        key: &str,
        (raise, clear): (&Condition, Option<&Condition>),
        for_ms: u64,
        at: u64,
        v: f64,
    ) -> Option<Transition> {
        let holds = raise.holds(v);
        if !holds && !self.states.contains(rule, key) {
            return None; // Normal, and stays so: nothing kept.
        }
        let s = self.state(rule, key, State::normal(at))?;
        if at < s.last {
            return None;
        }
        s.last = at;
        let (rule, key) = (rule.to_owned(), key.to_owned());
        let raised = |at| Transition::Raise {
            message: format!("{v} {} for {}", describe(raise), ms(for_ms)),
            rule: rule.clone(),
            key: key.clone(),
            at,
            value: Some(v),
        };
        match s.phase {
            Phase::Normal if holds && for_ms == 0 => {
                s.phase = Phase::Active;
                Some(raised(at))
            }
            Phase::Normal if holds => {
                s.phase = Phase::Pending(at);
                None
            }
            Phase::Pending(since) if holds => {
                if at.saturating_sub(since) >= for_ms {
                    s.phase = Phase::Active;
                    Some(raised(at))
                } else {
                    None
                }
            }
            Phase::Normal | Phase::Pending(_) => {
                self.states.remove(&rule, &key);
                None
            }
            Phase::Active => {
                let cleared = clear.map_or(!holds, |c| c.holds(v));
                if !cleared {
                    return None;
                }
                s.phase = Phase::Normal;
                self.states.remove(&rule, &key);
                Some(Transition::Clear {
                    message: match clear {
                        Some(c) => format!("{v} {}", describe(c)),
                        None => format!("{v} no longer {}", describe(raise)),
                    },
                    rule,
                    key,
                    at,
                    value: Some(v),
                })
            }
        }
    }

    /// A threshold rule (`when`, named `scope`) judging `key`'s row at `at`; `field` finds
    /// the value of a field in the row (none: the row does not have it as a number). Other
    /// kinds of rule judge nothing here.
    pub fn judge(
        &mut self,
        scope: &str,
        when: &RuleKind,
        key: &str,
        at: u64,
        field: impl FnOnce(&str) -> Option<f64>,
    ) -> Option<Transition> {
        let RuleKind::Threshold {
            field: name,
            raise,
            clear,
            for_,
            ..
        } = when
        else {
            return None;
        };
        let v = field(name)?;
        self.threshold(scope, key, (raise, clear.as_ref()), for_.as_millis() as u64, at, v)
    }

    /// A deadman rule's `key` starts being watched at `since` (its last known row, or when
    /// the rule or the process started), unless it is already.
    pub fn watch(&mut self, rule: &str, key: &str, since: u64) {
        if self.states.contains(rule, key) {
            return;
        }
        // Asked again every tick: a refusal is counted once per key, when a row names it.
        if self.states.count < self.max_states {
            self.states.insert(rule, key, State::normal(since));
        }
    }

    /// A deadman rule saw a row of `key` at `at`: a raised alarm clears.
    pub fn seen(&mut self, rule: &str, key: &str, at: u64) -> Option<Transition> {
        let s = self.state(rule, key, State::normal(at))?;
        s.last = s.last.max(at);
        if s.phase != Phase::Active {
            return None;
        }
        s.phase = Phase::Normal;
        Some(Transition::Clear {
            rule: rule.to_owned(),
            key: key.to_owned(),
            at,
            value: None,
            message: "rows again".into(),
        })
    }

    /// Whether a deadman's `key` has been silent for `after_ms` at `now`: raises once
    /// (at the time the silence reached `after_ms`). `gateway_up` false holds it back.
    pub fn silent(&mut self, rule: &str, key: &str, now: u64, after_ms: u64, gateway_up: bool) -> Option<Transition> {
        let s = self.states.get_mut(rule, key)?;
        if s.phase == Phase::Active || !gateway_up || now.saturating_sub(s.last) < after_ms {
            return None;
        }
        s.phase = Phase::Active;
        Some(Transition::Raise {
            rule: rule.to_owned(),
            key: key.to_owned(),
            at: s.last.saturating_add(after_ms),
            value: None,
            message: format!("no rows for {}", ms(after_ms)),
        })
    }

    /// Every watched key of a deadman `rule` silent for `after_ms` at `now` (a gateway's
    /// deadman, which is always up to judge its own devices): raises each once.
    pub fn silences(&mut self, rule: &str, now: u64, after_ms: u64) -> Vec<Transition> {
        let keys: Vec<String> = self
            .states
            .by_rule
            .get(rule)
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| self.silent(rule, k, now, after_ms, true))
            .collect()
    }

    /// A condition of `key` checked at `now` that has held since `since` (when `holds`):
    /// raises once it has held `after_ms`, clears when it no longer holds (a twin rule).
    pub fn holding(
        &mut self,
        rule: &str,
        key: &str,
        holds: Option<u64>,
        now: u64,
        after_ms: u64,
        what: &str,
    ) -> Option<Transition> {
        let active = self.states.get(rule, key).is_some_and(|s| s.phase == Phase::Active);
        match holds {
            Some(since) if !active && now.saturating_sub(since) >= after_ms => {
                let s = self.state(
                    rule,
                    key,
                    State {
                        phase: Phase::Active,
                        last: now,
                    },
                )?;
                s.phase = Phase::Active;
                Some(Transition::Raise {
                    rule: rule.to_owned(),
                    key: key.to_owned(),
                    at: since.saturating_add(after_ms),
                    value: None,
                    message: format!("{what} for {}", ms(after_ms)),
                })
            }
            None if active => {
                self.states.remove(rule, key);
                Some(Transition::Clear {
                    rule: rule.to_owned(),
                    key: key.to_owned(),
                    at: now,
                    value: None,
                    message: format!("no longer {what}"),
                })
            }
            _ => None,
        }
    }

    /// A scheduled query's result at `now`: every key it returned is raised (once), every
    /// raised key it no longer returns clears.
    pub fn keyed(&mut self, rule: &str, present: &[(String, Option<f64>)], now: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for key in self.states.active(rule) {
            if !present.iter().any(|(k, _)| *k == key) {
                self.states.remove(rule, &key);
                out.push(Transition::Clear {
                    rule: rule.to_owned(),
                    key,
                    at: now,
                    value: None,
                    message: "no longer returned by the query".into(),
                });
            }
        }
        for (key, value) in present {
            let Some(s) = self.state(rule, key, State::normal(now)) else {
                continue;
            };
            if s.phase != Phase::Active {
                s.phase = Phase::Active;
                out.push(Transition::Raise {
                    rule: rule.to_owned(),
                    key: key.clone(),
                    at: now,
                    value: *value,
                    message: "returned by the query".into(),
                });
            }
        }
        out
    }
}

fn describe(c: &Condition) -> String {
    let op = match c.op {
        crate::Comparison::Gt => ">",
        crate::Comparison::Ge => ">=",
        crate::Comparison::Lt => "<",
        crate::Comparison::Le => "<=",
        crate::Comparison::Eq => "==",
        crate::Comparison::Ne => "!=",
    };
    format!("{op} {}", c.value)
}

#[cfg(test)]
mod tests;
