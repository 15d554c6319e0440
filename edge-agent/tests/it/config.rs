//! The example configuration parses, and bad configurations fail with a clear message.

use std::time::Duration;

use twinlake_edge::EdgeConfig;

#[test]
fn the_example_config_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/edge-agent.example.toml");
    let c = EdgeConfig::load(std::path::Path::new(path)).unwrap();
    assert_eq!(c.gateway, "gw-1");
    assert_eq!(c.listener.tcp, Some("0.0.0.0:25200".parse().unwrap()));
    assert_eq!(c.listener.tls, Some("0.0.0.0:25202".parse().unwrap()));
    assert_eq!(c.devices.len(), 1);
    assert_eq!(c.streams.intervals["temp"], Duration::from_secs(1));
    assert_eq!(c.streams.intervals["debug"], Duration::ZERO);
    assert_eq!(c.wal.fsync_interval, Duration::from_millis(10));
    assert_eq!(c.upload.ttl, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(c.upload.options["aws_allow_http"], "true");
}

#[test]
fn an_empty_config_is_the_defaults() {
    let c = EdgeConfig::parse("").unwrap();
    assert_eq!(c.listener.tcp, Some("0.0.0.0:25200".parse().unwrap()));
    assert_eq!(c.listener.tls, None);
    assert!(c.devices.is_empty());
}

#[test]
fn bad_configs_say_what_is_wrong() {
    for (text, says) in [
        ("gatway = \"x\"", "unknown field"),
        ("gateway = \"a/b\"", "gateway"),
        ("[listener]\ntcp = \"nowhere\"", "nowhere"),
        ("[listener]\ntls = \"0.0.0.0:25202\"", "tls_cert"),
        ("[wal]\nfsync_interval = \"soon\"", "fsync_interval"),
        ("[parquet]\nzstd_level = 99", "zstd_level"),
        // A bucket write is checked once, as its frame is read: no frame past what the WAL reads.
        ("[listener]\nmax_frame_bytes = 2000000", "at most 1048576"),
        (
            "[[devices]]\nuser = \"a\"\ndevice = \"b\"\ncredential_hash = \"plain\"",
            "a/b",
        ),
        ("[mqtt]\nurl = \"http://x\"", "mqtt://"),
        ("[mqtt]\nurl = \"mqtt://x\"", "subscriptions"),
        (
            "[mqtt]\nurl = \"mqtt://x\"\n[[mqtt.subscriptions]]\ntopic = \"a/#/b\"",
            "last level",
        ),
        (
            "[mqtt]\nurl = \"mqtt://x\"\n[[mqtt.subscriptions]]\ntopic = \"a/+\"",
            "{device}",
        ),
        (
            "[mqtt]\nurl = \"mqtt://x\"\n[[mqtt.subscriptions]]\ntopic = \"a/{device}\"\nformat = \"xml\"",
            "xml",
        ),
        (
            "[mqtt]\ncommand_topic = \"a/#\"\nurl = \"mqtt://x\"\n[[mqtt.subscriptions]]\ntopic = \"a/{device}\"",
            "command_topic",
        ),
        (
            "[mqtt]\nurl = \"mqtt://x\"\n[mqtt.embedded]\n[[mqtt.subscriptions]]\ntopic = \"a/{device}\"",
            "exclude each other",
        ),
        ("[mqtt.embedded]\nallow_anonymous = true", "subscriptions"),
        // Accounts are required by default (#13, finding 12).
        (
            "[mqtt.embedded]\n[[mqtt.subscriptions]]\ntopic = \"a/{device}\"",
            "allow_anonymous",
        ),
        (
            "[mqtt.embedded]\nlisten = \"0.0.0.0:1883\"\nlisten_v5 = \"0.0.0.0:1883\"",
            "both",
        ),
        ("[mqtt.embedded]\nusers = { twinlake-x = \"p\" }", "namespace"),
        ("[mqtt.embedded]\nlisten = \"anywhere\"", "anywhere"),
        ("[lorawan]\nnet_id = \"zz\"", "net_id"),
        (
            "[[lorawan.devices]]\ndev_eui = \"01\"\napp_key = \"00000000000000000000000000000000\"",
            "dev_eui",
        ),
        (
            "[[lorawan.devices]]\ndev_eui = \"0000000000000001\"\napp_key = \"0011\"",
            "32 hex digits",
        ),
        (
            "[[lorawan.devices]]\ndev_eui = \"0000000000000001\"\ndev_addr = \"01020304\"",
            "ABP needs",
        ),
        (
            "[[lorawan.devices]]\ndev_eui = \"0000000000000001\"\napp_key = \"00000000000000000000000000000000\"\nprofile = \"p\"",
            "profile \"p\"",
        ),
        (
            "[[lorawan.profiles]]\nname = \"p\"\ncodec = \"layout\"\nfields = []",
            "at least one field",
        ),
        (
            "[[lorawan.profiles]]\nname = \"p\"\ncodec = \"cayenne\"\nfeilds = 1",
            "feilds",
        ),
        (
            "[[lorawan.profiles]]\nname = \"p\"\nfields = [{ name = \"a\", offset = 0, type = \"u8\" }]",
            "layout",
        ),
    ] {
        let err = EdgeConfig::parse(text).unwrap_err().to_string();
        assert!(err.contains(says), "{text:?} gave {err:?}");
    }
    let off = EdgeConfig::parse("[listener]\ntcp = \"off\"").unwrap();
    assert_eq!(off.listener.tcp, None);
}
