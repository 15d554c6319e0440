//! The demo's devices that do not speak the Thinger protocol: trucks that publish TSBS-style
//! readings (with a position) over MQTT to the agent's embedded broker, and LoRaWAN sensors
//! (ABP, Cayenne LPP) heard through a simulated Semtech packet forwarder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use lorawan::creator::DataPayloadCreator;
use lorawan::keys::{AppSKey, NewSKey};
use lorawan::parser::FCtrl;
use twinlake_edge::config::{LoraDevice, MqttSubscription};
use twinlake_edge::sources::hex;

/// The trucks' MQTT account on the embedded broker.
pub const TRUCK_USER: &str = "trucks";
pub const TRUCK_PASSWORD: &str = "trucks-demo";
/// Where the trucks publish, and the subscription that takes it.
pub const TRUCK_TOPIC: &str = "trucks/{device}/{resource}";
const TRUCKS: usize = 3;

/// The LoRaWAN sensors: DevEUI and DevAddr (ABP), one pair of session keys for all.
const LORA: [(&str, u32); 2] = [("70b3d57ed0000001", 0x2601_1001), ("70b3d57ed0000002", 0x2601_1002)];
const NWK_SKEY: [u8; 16] = [0x2b; 16];
const APP_SKEY: [u8; 16] = [0x01; 16];

/// The agent's subscription for the trucks.
pub fn truck_subscription() -> anyhow::Result<MqttSubscription> {
    Ok(toml::from_str(&format!(
        "topic = \"{TRUCK_TOPIC}\"\nformat = \"json\""
    ))?)
}

/// The LoRaWAN sensors as the agent's `[[lorawan.devices]]` (Cayenne LPP into `lorawan`).
pub fn lora_devices() -> anyhow::Result<Vec<LoraDevice>> {
    LORA.iter()
        .enumerate()
        .map(|(i, (eui, addr))| {
            let text = format!(
                "dev_eui = \"{eui}\"\nname = \"field-{}\"\ndev_addr = \"{addr:08x}\"\nnwk_skey = \"{}\"\napp_skey = \"{}\"",
                i + 1,
                hex(&NWK_SKEY),
                hex(&APP_SKEY)
            );
            Ok(toml::from_str(&text)?)
        })
        .collect()
}

/// One truck reading at tick `n`: a loop around a depot, and the TSBS fields.
fn reading(truck: usize, n: u64) -> String {
    let angle = (n as f64 / 60.0) + truck as f64 * 2.1;
    let lat = 52.37 + 0.02 * angle.sin() + truck as f64 * 0.05;
    let lon = 4.89 + 0.03 * angle.cos() - truck as f64 * 0.04;
    format!(
        r#"{{"latitude":{lat:.5},"longitude":{lon:.5},"elevation":{},"velocity":{},"heading":{},"grade":{},"fuel_consumption":{:.1}}}"#,
        (n * 7 + truck as u64 * 13) % 300,
        40 + (n + truck as u64 * 11) % 50,
        (n * 3 + truck as u64 * 90) % 360,
        n % 12,
        12.0 + ((n + truck as u64) % 40) as f64 / 4.0
    )
}

/// Publishes a reading per truck every second (QoS 1) until `stop`.
pub async fn trucks(broker: SocketAddr, stop: Arc<AtomicBool>) {
    let mut opts = rumqttc::MqttOptions::new("demo-trucks", broker.ip().to_string(), broker.port());
    opts.set_credentials(TRUCK_USER, TRUCK_PASSWORD)
        .set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    let poll = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for t in 1..=TRUCKS {
            let topic = TRUCK_TOPIC
                .replace("{device}", &format!("truck-{t}"))
                .replace("{resource}", "readings");
            let _ = client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, reading(t, n))
                .await;
        }
        n += 1;
    }
    let _ = client.disconnect().await;
    poll.abort();
}

/// An unconfirmed uplink of sensor `i` with counter `fcnt`: Cayenne temperature (channel 1)
/// and humidity (channel 2).
fn uplink(i: usize, addr: u32, fcnt: u32) -> anyhow::Result<Vec<u8>> {
    let t = 180 + ((fcnt as i32 * 7 + i as i32 * 40) % 80) as i16;
    let h = 100 + ((fcnt + i as u32 * 9) % 40) as u8;
    let payload = [1, 0x67, (t >> 8) as u8, t as u8, 2, 0x68, h];
    let mut c = DataPayloadCreator::new();
    c.set_uplink(true)
        .set_confirmed(false)
        .set_dev_addr(&addr.to_le_bytes())
        .set_fctrl(&FCtrl::new(0, true))
        .set_fcnt(fcnt)
        .set_f_port(2);
    let frame = c
        .build(&payload, &[], &NewSKey::from(NWK_SKEY), &AppSKey::from(APP_SKEY))
        .map_err(|e| anyhow::anyhow!("building an uplink: {e:?}"))?;
    Ok(frame.to_vec())
}

/// A packet forwarder (GWMP v2) that hears each sensor every 5 s, until `stop`.
pub async fn lora_gateway(server: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let sock = tokio::net::UdpSocket::bind(("127.0.0.1", 0)).await?;
    let eui = [0xaa, 0x55, 0x5a, 0x00, 0x00, 0x00, 0x00, 0x01];
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut fcnt = 0u32;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        fcnt += 1;
        let mut pull = vec![2, 0, fcnt as u8, 2];
        pull.extend_from_slice(&eui);
        sock.send_to(&pull, server).await?;
        for (i, (_, addr)) in LORA.iter().enumerate() {
            let frame = uplink(i, *addr, fcnt)?;
            let rxpk = serde_json::json!({"rxpk": [{
                "tmst": fcnt.wrapping_mul(5_000_000), "chan": i, "rfch": 0, "freq": 868.1 + 0.2 * i as f64,
                "stat": 1, "modu": "LORA", "datr": if i == 0 { "SF7BW125" } else { "SF9BW125" }, "codr": "4/5",
                "rssi": -60 - (fcnt % 20) as i64 - 25 * i as i64, "lsnr": 9.5 - (fcnt % 7) as f64 - 4.0 * i as f64,
                "size": frame.len(), "data": base64::engine::general_purpose::STANDARD.encode(&frame),
            }]});
            let mut push = vec![2, (fcnt >> 8) as u8, fcnt as u8, 0];
            push.extend_from_slice(&eui);
            push.extend_from_slice(rxpk.to_string().as_bytes());
            sock.send_to(&push, server).await?;
        }
        // Acknowledgements are read and let go.
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), sock.recv_from(&mut buf)).await {}
    }
    Ok(())
}
