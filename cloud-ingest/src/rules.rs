//! Rules and alarms in the cloud.
//!
//! * Threshold and deadman rules are evaluated on the rows as ingest sees them (flattened
//!   like the lake's columns), after their link batch is committed ([`observe`]), at the
//!   rows' own timestamps. Deadman silences and twin rules are checked every `rules.tick`,
//!   scheduled SQL every rule's `every` ([`tick`]).
//! * Each rule runs for its owner: it is only given the owner's rows and twins, its SQL
//!   runs in the owner's tenancy, and its device actions name the owner's devices only.
//! * A transition is stored with its alarm, its event and its actions' jobs in one
//!   transaction ([`alarms`]); actions are delivered by their own queues, so none holds up
//!   ingest.
//!
//! The evaluator's state is in memory. At start the open alarms are restored into it (so
//! their rules clear them); a threshold's pending `for` and a deadman's last row start over.

pub mod alarms;
pub mod email;
pub mod gateway;
pub mod mqtt;
mod table;
mod tick;

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;
use twinlake_lake::model::flatten;
use twinlake_query::FreshRow;
use twinlake_rules::{Rule, RuleKind, Transition};

pub use crate::ruleset::{RuleSet, Rules, scope, stored};
pub use tick::run;

use crate::state::AppState;
use crate::store::Db;

/// The `alarms` SQL table.
pub fn alarms_table(db: Db) -> table::AlarmsTable {
    table::AlarmsTable::new(db)
}

/// Evaluates the owner's threshold and deadman rules on rows of `table` just committed,
/// then stores what changed. Rows without an owner (from a gateway older than the column)
/// are not evaluated.
pub fn observe(state: &AppState, table: &str, stream: bool, rows: &[FreshRow<'_>]) {
    let set = state.rules.current();
    if set.rows.is_empty() {
        return;
    }
    let mut out: Vec<(Arc<Rule>, Transition)> = Vec::new();
    let mut fields = Vec::new();
    let mut tags: HashMap<String, Option<serde_json::Map<String, serde_json::Value>>> = HashMap::new();
    // Each rule's evaluator name, made once per batch.
    let mut names: HashMap<*const Rule, String> = HashMap::new();
    {
        let mut eval = state.rules.evaluator();
        for row in rows {
            let Some(owner) = row.owner else { continue };
            let Some(mine) = set.rows.get(owner) else { continue };
            let by_table = mine.by_table.get(table);
            let at = (row.time_us.max(0) / 1000) as u64;
            let mut flattened = false;
            let candidates = by_table
                .into_iter()
                .flat_map(|s| s.for_device(row.device))
                .chain(mine.any_table.for_device(row.device));
            for rule in candidates {
                let Some(sel) = rule.when.selector() else { continue };
                let tag_map = sel
                    .needs_tags()
                    .then(|| {
                        tags.entry(row.device.to_owned())
                            .or_insert_with(|| device_tags(state, owner, row.device))
                            .as_ref()
                    })
                    .flatten();
                if !sel.matches(row.device, tag_map) {
                    continue;
                }
                let name = names.entry(Arc::as_ptr(rule)).or_insert_with(|| scope(rule)).as_str();
                let t = match &rule.when {
                    RuleKind::Threshold { .. } => eval.judge(name, &rule.when, row.device, at, |field| {
                        if !flattened {
                            flatten(row.payload, stream, &mut fields);
                            flattened = true;
                        }
                        let v = fields.iter().find(|(k, _)| k == field)?.1.as_f64()?;
                        state.metrics.rule_values.inc();
                        Some(v)
                    }),
                    RuleKind::Deadman { .. } => eval.seen(name, row.device, at),
                    RuleKind::Twin { .. } | RuleKind::Gateway { .. } | RuleKind::Sql { .. } => None,
                };
                if let Some(t) = t {
                    out.push((rule.clone(), t));
                }
            }
        }
        state.metrics.rule_states.set(eval.len() as i64);
        state.metrics.rule_states_refused.set(eval.refused() as i64);
    }
    if !out.is_empty()
        && let Err(e) = alarms::record(state, out)
    {
        warn!(error = %e, "cannot store alarms");
    }
}

/// The tags of the owner's device (from its twin), for rules that select by tag.
fn device_tags(state: &AppState, owner: &str, device: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let key = twinlake_twin::TwinKey::new(owner, device);
    state.twins.get(&key).ok().flatten().map(|t| t.tags)
}
