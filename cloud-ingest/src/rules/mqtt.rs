//! Alarm publishes to an MQTT broker (`[mqtt_actions]`): queued with the alarm's
//! transaction, published at QoS 1 by one worker (retried with back-off), each at
//! `<topic_prefix>/<owner>/<the action's topic>` so one user cannot write another's topics.

use std::sync::Arc;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use twinlake_rules::Alarm;

use super::alarms::{Change, to_json};
use crate::Error;
use crate::config::MqttActionsSection;
use crate::jobs::{Event as JobEvent, Job, Outcome, Queue};
use crate::state::AppState;
use crate::store::MQTT_OUT;

/// A publish waiting to go out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MqttJob {
    pub user: String,
    pub topic: String,
    pub payload: String,
    #[serde(default)]
    pub attempts: u32,
}

impl Job for MqttJob {
    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn set_attempts(&mut self, n: u32) {
        self.attempts = n;
    }
}

fn queue(state: &AppState) -> Queue {
    Queue {
        table: MQTT_OUT,
        name: "mqtt_out",
        attempts: state.cfg.mqtt_actions.attempts,
        retry_min: state.cfg.mqtt_actions.retry_min,
    }
}

fn outcome(o: &str) -> Vec<(String, String)> {
    crate::metrics::label("outcome", o)
}

/// Queues the publish for an alarm's change in `tx` (the caller wakes the worker once it
/// commits). Past `mqtt_actions.max_queued` the oldest goes (counted).
pub fn enqueue(
    state: &AppState,
    tx: &redb::WriteTransaction,
    topic: &str,
    a: &Alarm,
    change: Change,
) -> Result<(), Error> {
    let cfg = &state.cfg.mqtt_actions;
    let job = MqttJob {
        user: a.owner.clone(),
        topic: format!("{}/{}/{topic}", cfg.topic_prefix.trim_end_matches('/'), a.owner),
        payload: to_json(a, Some(change)).to_string(),
        attempts: 0,
    };
    if crate::jobs::push(tx, &queue(state), &job, cfg.max_queued)? {
        state.metrics.mqtt_actions.get_or_create(&outcome("dropped")).inc();
        warn!("alarm publish queue full; dropped the oldest");
    }
    Ok(())
}

/// The broker's options from `mqtt://[user:password@]host[:port]`.
fn options(cfg: &MqttActionsSection) -> Result<MqttOptions, String> {
    let url = url::Url::parse(&cfg.url).map_err(|e| format!("mqtt_actions.url: {e}"))?;
    if url.scheme() != "mqtt" {
        return Err("mqtt_actions.url: use mqtt://host:port".into());
    }
    let host = url.host_str().ok_or("mqtt_actions.url: no host")?;
    let mut o = MqttOptions::new(&cfg.client_id, host, url.port().unwrap_or(1883));
    o.set_keep_alive(std::time::Duration::from_secs(30));
    if !url.username().is_empty() {
        o.set_credentials(url.username(), url.password().unwrap_or(""));
    }
    Ok(o)
}

/// One publish on a connection of its own, confirmed by the broker's PUBACK.
async fn publish(cfg: &MqttActionsSection, job: &MqttJob) -> Outcome {
    let opts = match options(cfg) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(e),
    };
    let (client, mut events) = AsyncClient::new(opts, 4);
    if let Err(e) = client
        .publish(&job.topic, QoS::AtLeastOnce, false, job.payload.clone().into_bytes())
        .await
    {
        return Outcome::Failed(e.to_string());
    }
    let acked = tokio::time::timeout(cfg.timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => return Ok(()),
                Ok(Event::Incoming(Incoming::ConnAck(c))) if c.code != ConnectReturnCode::Success => {
                    return Err(format!("the broker refused the connection: {:?}", c.code));
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), events.poll()).await;
    match acked {
        Ok(Ok(())) => Outcome::Delivered,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(format!("no PUBACK within {:?}", cfg.timeout)),
    }
}

/// Publishes queued alarms until the cloud stops.
pub async fn run(state: Arc<AppState>) {
    if state.cfg.mqtt_actions.url.is_empty() {
        return;
    }
    let cfg = state.cfg.mqtt_actions.clone();
    let deliver = move |job: MqttJob| {
        let cfg = cfg.clone();
        async move { publish(&cfg, &job).await }
    };
    let m = state.clone();
    let on = move |job: &MqttJob, e: JobEvent<'_>| match e {
        JobEvent::Delivered => {
            m.metrics.mqtt_actions.get_or_create(&outcome("sent")).inc();
            debug!(topic = %job.topic, "alarm published");
        }
        JobEvent::Dropped(why) | JobEvent::GaveUp(why) => {
            m.metrics.mqtt_actions.get_or_create(&outcome("dropped")).inc();
            warn!(user = %job.user, %why, "alarm publish dropped");
        }
        JobEvent::Retrying(why, backoff) => {
            m.metrics.mqtt_actions.get_or_create(&outcome("failed")).inc();
            warn!(%why, retry_in_ms = backoff.as_millis() as u64, "alarm publish failed; will retry");
        }
    };
    crate::jobs::work(state.clone(), queue(&state), &state.mqtt_wake, deliver, on).await;
}
