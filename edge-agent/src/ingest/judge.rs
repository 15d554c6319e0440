//! The gateway's rules and retention on the ingest path: a row past retention is refused
//! before any ack; a row the rules judge brings its alarm rows into the same fsync, and the
//! deadman rules are asked for silences once a second.

use tokio::time::{Duration, Instant};

use super::Ingest;
use crate::wal::{RecordKind, WalRecord};

impl Ingest {
    /// The gateway's rules on a row just appended: alarm rows in
    /// the same fsync as the row that raised them, their actions run after it.
    pub(super) fn judge(&mut self, rec: &WalRecord<'_>) {
        let (who, stream) = ((rec.owner, rec.device), rec.kind == RecordKind::Stream);
        let alarms = self
            .rules
            .as_ref()
            .map(|r| r.observe(rec.table, who, rec.time_us, stream, rec.payload));
        for (a, actions) in alarms.unwrap_or_default() {
            self.append_alarm(a, actions, who, rec.time_us);
        }
    }

    fn append_alarm(
        &mut self,
        row: serde_json::Value,
        actions: Vec<crate::rules::DeviceAction>,
        (user, device): (&str, &str),
        time_us: i64,
    ) {
        self.unsynced.actions.extend(actions);
        let row = twinlake_sdk::json::from_json(&row).to_bytes();
        let _ = self.append_row(
            RecordKind::Record,
            crate::rules::ALARMS_TABLE,
            (user, device),
            time_us,
            super::Payload::Unchecked(&row),
        );
    }

    /// The gateway's deadman rules, asked at most once a second: a raised silence is an
    /// alarm row in the next fsync (at the device it names).
    pub(super) fn check_silences(&mut self) {
        let Some(rules) = self.rules.clone() else { return };
        let now = Instant::now();
        if self.silences_at.is_some_and(|at| at > now) {
            return;
        }
        self.silences_at = Some(now + Duration::from_secs(1));
        let now_us = super::micros(std::time::SystemTime::now());
        for (user, device, row, actions) in rules.silences((now_us / 1000) as u64) {
            self.append_alarm(row, actions, (&user, &device), now_us);
        }
        if self.unsynced.rows > 0 && self.sync_at.is_none() {
            self.sync_at = Some(Instant::now() + self.wal_cfg.fsync_interval);
        }
    }

    /// Whether a row is past its table's retention: then refused and counted.
    pub(super) fn past_retention(&self, table: &str, time_us: i64) -> bool {
        let past = self.retention.expired(table, time_us);
        if past {
            self.metrics.refused("expired", 1);
        }
        past
    }
}
