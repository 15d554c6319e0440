//! The rules in force, indexed for ingest, and the evaluator's state: what the shared
//! state holds. How they run is in [`crate::rules`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableDatabase, ReadableTable};
use twinlake_rules::{Evaluator, Rule, RuleKind};

use crate::Error;
use crate::store::{Db, OPEN_ALARMS, RULES, decode};

/// The evaluator's name for a rule: `owner/id`.
pub fn scope(rule: &Rule) -> String {
    rule.scope()
}

/// Rules for some devices: those naming devices, by device; the others (all devices, or
/// by tag) for every device.
#[derive(Debug, Default)]
pub struct Scoped {
    by_device: HashMap<String, Vec<Arc<Rule>>>,
    every: Vec<Arc<Rule>>,
}

impl Scoped {
    fn add(&mut self, r: &Arc<Rule>) {
        match r.when.selector() {
            Some(sel) if !sel.devices.is_empty() => {
                for d in &sel.devices {
                    self.by_device.entry(d.clone()).or_default().push(r.clone());
                }
            }
            _ => self.every.push(r.clone()),
        }
    }

    /// The rules that may apply to `device`.
    pub fn for_device<'a>(&'a self, device: &str) -> impl Iterator<Item = &'a Arc<Rule>> {
        self.by_device.get(device).into_iter().flatten().chain(&self.every)
    }
}

/// One owner's row rules: by table, and (deadman rules without one) on every table.
#[derive(Debug, Default)]
pub struct OwnerRules {
    pub by_table: HashMap<String, Scoped>,
    pub any_table: Scoped,
}

/// The enabled cloud rules, indexed for ingest: a row's candidates are found without
/// allocating, and a rule naming devices is looked at only for those devices.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub(crate) by_scope: HashMap<String, Arc<Rule>>,
    /// Threshold and deadman rules, by owner.
    pub(crate) rows: HashMap<String, OwnerRules>,
}

impl RuleSet {
    fn build(rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut set = Self::default();
        for r in rules {
            if !r.enabled {
                continue;
            }
            let r = Arc::new(r);
            if r.gateway.is_some() {
                // Evaluated by its gateway: known here for the alarms it sends.
                set.by_scope.insert(scope(&r), r);
                continue;
            }
            match &r.when {
                RuleKind::Threshold { table, .. } | RuleKind::Deadman { table: Some(table), .. } => set
                    .rows
                    .entry(r.owner.clone())
                    .or_default()
                    .by_table
                    .entry(table.clone())
                    .or_default()
                    .add(&r),
                RuleKind::Deadman { table: None, .. } => set.rows.entry(r.owner.clone()).or_default().any_table.add(&r),
                RuleKind::Twin { .. } | RuleKind::Gateway { .. } | RuleKind::Sql { .. } => {}
            }
            set.by_scope.insert(scope(&r), r);
        }
        set
    }

    pub fn get(&self, scope: &str) -> Option<&Arc<Rule>> {
        self.by_scope.get(scope)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.by_scope.values()
    }
}

/// The rules in force and the evaluator.
#[derive(Debug)]
pub struct Rules {
    set: RwLock<Arc<RuleSet>>,
    eval: Mutex<Evaluator>,
    fixed: Vec<Rule>,
    /// When this process started (ms): deadman silences count from here at the latest.
    pub started: u64,
}

impl Rules {
    /// Loads the stored rules and the config's, and restores the open alarms.
    pub fn open(db: &Db, cfg: &crate::config::RulesSection) -> Result<Self, Error> {
        let mut fixed = Vec::new();
        for r in &cfg.fixed {
            if r.owner.is_empty() {
                return Err(Error::Config(format!("rules.fixed {:?}: give it an owner", r.id)));
            }
            r.check(cfg.min_sql_every)
                .map_err(|e| Error::Config(format!("rules.fixed {:?}: {e}", r.id)))?;
            if r.gateway.is_some() && !matches!(r.when, RuleKind::Threshold { .. } | RuleKind::Deadman { .. }) {
                return Err(Error::Config(format!(
                    "rules.fixed {:?}: a gateway evaluates threshold and deadman rules only",
                    r.id
                )));
            }
            fixed.push(r.clone());
        }
        let rules = Self {
            set: RwLock::default(),
            eval: Mutex::new(Evaluator::new(cfg.max_states)),
            fixed,
            started: twinlake_twin::now_ms(),
        };
        rules.reload(db)?;
        let tx = db.0.begin_read()?;
        let open = tx.open_table(OPEN_ALARMS)?;
        let mut eval = rules.evaluator();
        for entry in open.iter()? {
            let (k, _) = entry?;
            // `user/rule/key`: the key may hold '/' (a SQL rule's key values).
            let mut parts = k.value().splitn(3, '/');
            if let (Some(u), Some(r), Some(key)) = (parts.next(), parts.next(), parts.next()) {
                eval.restore(&format!("{u}/{r}"), key, rules.started);
            }
        }
        drop(eval);
        Ok(rules)
    }

    /// Rebuilds the set from the database (after a change through the API).
    pub fn reload(&self, db: &Db) -> Result<(), Error> {
        let stored: Vec<(String, Rule)> = db.scan(RULES, "")?;
        let set = RuleSet::build(self.fixed.iter().cloned().chain(stored.into_iter().map(|(_, r)| r)));
        if let Ok(mut s) = self.set.write() {
            *s = Arc::new(set);
        }
        Ok(())
    }

    /// Whether `owner/id` comes from the config file.
    pub fn is_fixed(&self, owner: &str, id: &str) -> bool {
        self.fixed.iter().any(|r| r.owner == owner && r.id == id)
    }

    /// The config file's rules of `owner` (or everyone's).
    pub fn fixed(&self, owner: Option<&str>) -> impl Iterator<Item = &Rule> {
        self.fixed.iter().filter(move |r| owner.is_none_or(|o| r.owner == o))
    }

    pub fn current(&self) -> Arc<RuleSet> {
        self.set.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn evaluator(&self) -> std::sync::MutexGuard<'_, Evaluator> {
        self.eval.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads the stored rule `owner/id`.
pub fn stored(db: &Db, owner: &str, id: &str) -> Result<Option<Rule>, Error> {
    let tx = db.0.begin_read()?;
    let t = tx.open_table(RULES)?;
    let key = twinlake_rules::scope(owner, id);
    let v = t.get(key.as_str())?;
    v.map(|v| decode("rules", &key, v.value())).transpose()
}
