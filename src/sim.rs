//! Simulated devices on the SDK: a sensor with temperature, humidity, a LED and a calculator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Args;
use twinlake_sdk::client::{Client, ClientConfig, Tls};
use twinlake_sdk::device::Thing;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Listener address, host:port.
    #[arg(long, default_value = "127.0.0.1:25200")]
    pub connect: String,
    /// How many devices.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Account the devices belong to.
    #[arg(long, default_value = "demo")]
    pub user: String,
    /// Device ids are PREFIX-1 … PREFIX-N.
    #[arg(long, default_value = "sensor")]
    pub prefix: String,
    /// The devices' credential.
    #[arg(long, default_value = "twinlake")]
    pub credential: String,
    /// Connect with TLS without checking the certificate (like the Thinger Linux client).
    #[arg(long)]
    pub insecure_tls: bool,
}

/// A simulated sensor: `temp` and `hum` outputs drifting over time (seed 2's temperature
/// spikes now and then), a `led` input, and an `in_out` calculator like the Thinger example
/// sketch.
pub fn sensor(seed: u64) -> Thing {
    let mut thing = Thing::default();
    let tick = Arc::new(AtomicU64::new(seed.wrapping_mul(7919)));
    let t = tick.clone();
    thing.resource("temp").output(move |out| {
        let n = t.fetch_add(1, Ordering::Relaxed);
        // sensor-2 has a fault: every 30th reading jumps 12 degrees (notebooks/04-anomalies).
        let spike = if seed == 2 && n % 30 == 29 { 12.0 } else { 0.0 };
        *out = (20.0 + (seed % 5) as f64 + ((n % 40) as f64 - 20.0).abs() / 8.0 + spike).into();
    });
    let h = tick;
    thing.resource("hum").output(move |out| {
        let n = h.load(Ordering::Relaxed);
        *out = (40 + (n % 17) as i64).into();
    });
    let led = Arc::new(AtomicBool::new(false));
    thing.resource("led").input_bool(led);
    thing.resource("in_out").input_output(|input, out| {
        let a = input.entry("value1").or_insert(0).as_i64().unwrap_or(0);
        let b = input.entry("value2").or_insert(0).as_i64().unwrap_or(0);
        *out.entry("sum") = a.saturating_add(b).into();
        *out.entry("mult") = a.saturating_mul(b).into();
    });
    thing
}

/// Starts `args.devices` simulated devices, each on its own thread, until `stop` is set.
pub fn spawn(args: &SimArgs, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let (host, port) = args
        .connect
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--connect wants host:port, got {}", args.connect))?;
    let port: u16 = port.parse()?;
    let mut threads = Vec::new();
    for i in 1..=args.devices {
        let mut config = ClientConfig::new(
            host,
            port,
            &args.user,
            &format!("{}-{i}", args.prefix),
            &args.credential,
        );
        config.reconnect_min = Duration::from_millis(500);
        config.poll_interval = Duration::from_millis(50);
        if args.insecure_tls {
            config.tls = Tls::Insecure;
        }
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let device = config.device.clone();
            let mut client = Client::new(config, sensor(i as u64));
            client.run(
                &stop,
                |e| tracing::info!(%device, error = %e, "simulated device reconnecting"),
            );
        }));
    }
    Ok(threads)
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = spawn(&args, stop)?;
    println!(
        "{} simulated devices connecting to {} as user {:?}",
        args.devices, args.connect, args.user
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
