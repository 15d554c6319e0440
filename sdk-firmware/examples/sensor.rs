//! A simulated sensor, the Rust twin of Thinger's ESP8266 example sketch:
//! `led` (input), `millis` (output) and `in_out` (input/output returning sum and mult).
//!
//! ```text
//! cargo run -p twinlake-sdk --example sensor -- HOST:PORT USER DEVICE CREDENTIAL [--tls CA.pem | --insecure]
//! ```
//!
//! The edge agent's integration tests run [`sensor_thing`] against the listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use twinlake_sdk::client::{Client, ClientConfig, Tls};
use twinlake_sdk::device::Thing;

/// The device: the sketch's three resources. Returns the LED state too.
pub fn sensor_thing() -> (Thing, Arc<AtomicBool>) {
    let mut thing = Thing::default();
    let led = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // thing["led"] << digitalPin(LED_BUILTIN);
    let l = led.clone();
    thing.resource("led").input(move |v| match v.as_bool() {
        Some(on) => {
            l.store(on, Ordering::Relaxed);
            println!("led is now {}", if on { "on" } else { "off" });
        }
        None => *v = l.load(Ordering::Relaxed).into(),
    });
    // thing["millis"] >> outputValue(millis());
    thing
        .resource("millis")
        .output(move |out| *out = (started.elapsed().as_millis() as u64).into());
    // thing["in_out"] = [](pson& in, pson& out){ out["sum"] = …; out["mult"] = …; };
    thing.resource("in_out").input_output(|input, out| {
        let a = input.entry("value1").or_insert(0).as_i64().unwrap_or(0);
        let b = input.entry("value2").or_insert(0).as_i64().unwrap_or(0);
        *out.entry("sum") = a.saturating_add(b).into();
        *out.entry("mult") = a.saturating_mul(b).into();
    });
    (thing, led)
}

fn usage() -> ! {
    eprintln!("usage: sensor HOST:PORT USER DEVICE CREDENTIAL [--tls CA.pem | --insecure]");
    std::process::exit(2)
}

fn tls_from(ca: &str) -> Result<Tls, String> {
    let pem = std::fs::read(ca).map_err(|e| e.to_string())?;
    Tls::from_ca_pem(&pem).map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, user, device, credential, rest @ ..] = args.as_slice() else {
        usage()
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        usage()
    };
    let Ok(port) = port.parse() else { usage() };
    let mut config = ClientConfig::new(host, port, user, device, credential);
    config.tls = match rest {
        [] => Tls::Off,
        [flag] if flag == "--insecure" => Tls::Insecure,
        [flag, ca] if flag == "--tls" => tls_from(ca).unwrap_or_else(|e| {
            eprintln!("cannot use {ca}: {e}");
            std::process::exit(2)
        }),
        _ => usage(),
    };

    let (thing, _led) = sensor_thing();
    let mut client = Client::new(config, thing);
    let mut was_connected = false;
    loop {
        if let Err(e) = client.handle() {
            eprintln!("connection lost: {e}; retrying with back-off");
        }
        if client.is_connected() != was_connected {
            was_connected = client.is_connected();
            println!("{}", if was_connected { "connected" } else { "disconnected" });
        }
    }
}
