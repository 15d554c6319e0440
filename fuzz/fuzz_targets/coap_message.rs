//! The CoAP source's message path on arbitrary datagrams, without I/O: the message codec
//! (coap-lite), the Uri-Path route, the Block1 option and a bounded block-wise reassembly,
//! the retransmission cache, and the payload by Content-Format (JSON, CBOR, PSON, text).
//! Input: a datagram; several blocks and retransmissions come from reading it as more
//! than one message (`[len: u8][datagram]…`). No panic; every state stays within its
//! bounds; values decode to PSON that encodes, decodes and flattens.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use coap_lite::{CoapOption, Packet};
use libfuzzer_sys::fuzz_target;
use twinlake_edge::lake::model;
use twinlake_edge::sources::coap::exchange::{Assembled, Block, Dedup, Route, Transfers, values};
use twinlake_sdk::pson::ValueRef;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let peer = SocketAddr::from(([127, 0, 0, 1], 5683));
    let mut dedup = Dedup::new(Duration::from_secs(247), 4);
    let mut transfers = Transfers::new(2, 512, Duration::from_secs(60));
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (dgram, tail) = tail.split_at(n);
        rest = tail;
        let Ok(p) = Packet::from_bytes(dgram) else { continue };
        let _ = p.to_bytes_unlimited();
        let _ = dedup.check(peer, p.header.message_id, now);
        assert!(dedup.len() <= 4);
        let segs: Vec<&str> = p
            .get_option(CoapOption::UriPath)
            .map(|l| l.iter().filter_map(|v| std::str::from_utf8(v).ok()).collect())
            .unwrap_or_default();
        let _ = Route::parse(&segs);
        let format = p
            .get_first_option(CoapOption::ContentFormat)
            .filter(|v| v.len() <= 2)
            .map(|v| v.iter().fold(0u16, |a, b| (a << 8) | u16::from(*b)));
        let body = match p.get_first_option(CoapOption::Block1).and_then(|b| Block::parse(b)) {
            Some(block) => {
                assert_eq!(Block::parse(&block.encode()), Some(block));
                match transfers.add(peer, "p", block, &p.payload, now) {
                    Assembled::Done(b) => {
                        assert!(b.len() <= 512);
                        b
                    }
                    _ => continue,
                }
            }
            None => p.payload.clone(),
        };
        assert!(transfers.len() <= 2);
        let Ok(vals) = values(format, &body, SystemTime::UNIX_EPOCH) else { continue };
        for (_, v) in vals {
            let bytes = v.to_bytes();
            let v = ValueRef::decode(&bytes).expect("a value decodes again");
            let mut fields = Vec::new();
            model::flatten(v, false, &mut fields);
        }
    }
});
