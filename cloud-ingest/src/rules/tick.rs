//! The clock's side of rules: deadman silences and twin rules every `rules.tick`, and each
//! scheduled SQL rule every `every` (in its own task, so a slow query holds back no
//! deadman).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;
use futures_util::StreamExt;
use serde_json::Value as Json;
use tokio::time::Instant;
use tracing::warn;
use twinlake_rules::{Rule, RuleKind, Transition};
use twinlake_twin::Twin;

use super::{alarms, scope};
use crate::Error;
use crate::state::AppState;

/// A scheduled query's result is read up to this many rows (keys).
const MAX_SQL_KEYS: usize = 10_000;

/// Runs until the cloud stops.
pub async fn run(state: Arc<AppState>) {
    let sql = tokio::spawn(sql_rules(state.clone()));
    let mut stop = state.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(state.cfg.rules.tick) => {}
            _ = crate::state::stopped(&mut stop) => break,
        }
        let st = state.clone();
        match tokio::task::spawn_blocking(move || check(&st)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot check deadman and twin rules"),
            Err(e) => warn!(error = %e, "the rule check failed"),
        }
    }
    let _ = sql.await;
}

/// The latest `timestamp` under a metadata node.
fn latest(meta: &Json) -> Option<u64> {
    match meta {
        Json::Object(o) => o
            .get("timestamp")
            .and_then(Json::as_u64)
            .into_iter()
            .chain(o.values().filter_map(latest))
            .max(),
        _ => None,
    }
}

/// Since when a twin has ignored its desired state: it is online and desired ≠ reported,
/// since the later of its connection and the newest desired value still out of sync.
fn out_of_sync_since(t: &Twin) -> Option<u64> {
    if !t.connection.online {
        return None;
    }
    let delta = t.delta();
    if delta.is_empty() {
        return None;
    }
    let desired = delta
        .keys()
        .filter_map(|k| t.meta_desired.get(k).and_then(latest))
        .max();
    Some(desired.unwrap_or(0).max(t.connection.connected_at.unwrap_or(0)))
}

/// Deadman and twin rules, over each owner's twins.
fn check(state: &AppState) -> Result<(), Error> {
    let set = state.rules.current();
    let mut by_owner: HashMap<&str, Vec<&Arc<Rule>>> = HashMap::new();
    // A rule placed on a gateway is that gateway's to judge.
    for r in set.all().filter(|r| r.gateway.is_none()) {
        if matches!(
            r.when,
            RuleKind::Deadman { .. } | RuleKind::Twin { .. } | RuleKind::Gateway { .. }
        ) {
            by_owner.entry(r.owner.as_str()).or_default().push(r);
        }
    }
    let now = twinlake_twin::now_ms();
    let mut out: Vec<(Arc<Rule>, Transition)> = Vec::new();
    for (owner, rules) in by_owner {
        let twins = state.twins.list(Some(owner))?;
        let mut eval = state.rules.evaluator();
        for rule in rules {
            let name = scope(rule);
            if let RuleKind::Gateway { gateway, after } = &rule.when {
                let since = state.gateways.unlinked_since(gateway, state.rules.started);
                let what = "the gateway not linked";
                if let Some(tr) = eval.holding(&name, gateway, since, now, after.as_millis() as u64, what) {
                    out.push((rule.clone(), tr));
                }
                continue;
            }
            let Some(sel) = rule.when.selector() else { continue };
            for t in twins.iter().filter(|t| sel.matches(&t.device, Some(&t.tags))) {
                let tr = match &rule.when {
                    RuleKind::Deadman { after, .. } => {
                        eval.watch(&name, &t.device, rule.created.max(state.rules.started));
                        let up = t
                            .connection
                            .gateway
                            .as_deref()
                            .is_none_or(|g| state.gateways.is_linked(g));
                        eval.silent(&name, &t.device, now, after.as_millis() as u64, up)
                    }
                    RuleKind::Twin { after, .. } => eval.holding(
                        &name,
                        &t.device,
                        out_of_sync_since(t),
                        now,
                        after.as_millis() as u64,
                        "desired and reported differ",
                    ),
                    RuleKind::Threshold { .. } | RuleKind::Gateway { .. } | RuleKind::Sql { .. } => None,
                };
                if let Some(tr) = tr {
                    out.push((rule.clone(), tr));
                }
            }
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    alarms::record(state, out)
}

/// Scheduled SQL rules, each when due.
async fn sql_rules(state: Arc<AppState>) {
    let mut stop = state.stop.subscribe();
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500).min(state.cfg.rules.tick)) => {}
            _ = crate::state::stopped(&mut stop) => return,
        }
        let set = state.rules.current();
        let now = Instant::now();
        for rule in set.all() {
            let RuleKind::Sql { query, every, key } = &rule.when else {
                continue;
            };
            let name = scope(rule);
            if due.get(&name).is_some_and(|d| *d > now) {
                continue;
            }
            due.insert(name.clone(), now + *every);
            match run_query(&state, &rule.owner, query, key).await {
                Ok(rows) => {
                    let out: Vec<_> = state
                        .rules
                        .evaluator()
                        .keyed(&name, &rows, twinlake_twin::now_ms())
                        .into_iter()
                        .map(|t| (rule.clone(), t))
                        .collect();
                    if !out.is_empty() {
                        let st = state.clone();
                        let r = tokio::task::spawn_blocking(move || alarms::record(&st, out)).await;
                        if let Ok(Err(e)) = r {
                            warn!(error = %e, "cannot store alarms");
                        }
                    }
                }
                Err(e) => {
                    state.metrics.rule_sql_errors.inc();
                    warn!(owner = %rule.owner, rule = %rule.id, error = %e, "a scheduled SQL rule failed");
                }
            }
        }
        due.retain(|k, _| set.get(k).is_some());
    }
}

/// Runs `query` as `owner` (their rows only) and returns each row's key (the `key`
/// columns' values joined by `/`) and its `value` column when that is a number.
async fn run_query(
    state: &AppState,
    owner: &str,
    query: &str,
    key: &[String],
) -> Result<Vec<(String, Option<f64>)>, String> {
    let mut stream = state
        .sql
        .query_as(Some(owner.to_owned()), query, None)
        .await
        .map_err(|e| e.to_string())?;
    let schema = stream.schema();
    let cols: Vec<usize> = key
        .iter()
        .map(|k| {
            schema
                .index_of(k)
                .map_err(|_| format!("the query returns no column {k:?}"))
        })
        .collect::<Result<_, _>>()?;
    let value = schema.index_of("value").ok();
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            let k: Vec<String> = cols
                .iter()
                .map(|&c| array_value_to_string(batch.column(c), row).unwrap_or_default())
                .collect();
            let v = value.and_then(|c| number(batch.column(c).as_ref(), row));
            out.push((k.join("/"), v));
            if out.len() >= MAX_SQL_KEYS {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn number(a: &dyn Array, row: usize) -> Option<f64> {
    if a.is_null(row) {
        return None;
    }
    match a.data_type() {
        DataType::Float64 => Some(a.as_primitive::<arrow::datatypes::Float64Type>().value(row)),
        DataType::Int64 => Some(a.as_primitive::<arrow::datatypes::Int64Type>().value(row) as f64),
        DataType::Float32 => Some(f64::from(a.as_primitive::<arrow::datatypes::Float32Type>().value(row))),
        DataType::Int32 => Some(f64::from(a.as_primitive::<arrow::datatypes::Int32Type>().value(row))),
        DataType::UInt64 => Some(a.as_primitive::<arrow::datatypes::UInt64Type>().value(row) as f64),
        _ => None,
    }
}
