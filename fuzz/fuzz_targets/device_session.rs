//! The device session state machine (AUTH, replies, streams, buckets, properties) driven by
//! arbitrary frames from a device and arbitrary server actions between them. Input: a
//! sequence of `[op][…]`: op 0 feeds the next frame the decoder finds in the rest of the
//! input, 1 accepts, 2 refuses, 3 starts a stream, 4 stops one, 5 forgets a request, 6 acks,
//! 7 answers a property. No panic; nothing but AUTH comes out before an accept; at most one
//! AUTH; nothing after a refusal; everything the session writes is one whole frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_edge::listener::session::{Session, SessionEvent};
use twinlake_sdk::frame::{Frame, FrameDecoder, FrameLimits, Message, Signal};
use twinlake_sdk::pson::Value;

/// What the session wrote: valid frames, whole, and nothing after the last.
fn whole_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut d = FrameDecoder::new(FrameLimits::default());
    d.push(bytes);
    let mut frames = Vec::new();
    while let Some(f) = d.next_frame().expect("the session writes valid frames") {
        frames.push(f);
    }
    assert_eq!(d.buffered(), 0, "whole frames only");
    frames
}

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new();
    let mut dec = FrameDecoder::new(FrameLimits {
        max_body: 4096,
        max_depth: 16,
    });
    let (mut auths, mut accepted, mut refused) = (0, false, false);
    let mut sids = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let op = data[i] % 8;
        let arg = data.get(i + 1).copied().unwrap_or(0);
        i += 1;
        match op {
            0 => {
                // The next frame: the decoder takes bytes up to its first whole frame.
                // Handled borrowed from the decoder's buffer, as the listener does.
                let mut event = None;
                while event.is_none() && i < data.len() {
                    dec.push(&data[i..i + 1]);
                    i += 1;
                    match dec.next_ref() {
                        Ok(Some(f)) => event = Some(s.handle_ref(f)),
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
                let Some(event) = event else { return };
                if let Ok(Some(SessionEvent::Bucket { payload: Some(p), .. })) = &event {
                    assert!(twinlake_sdk::pson::ValueRef::decode(p.as_bytes()).is_ok(), "a bucket payload decodes");
                }
                match event {
                    Ok(Some(SessionEvent::Auth(_))) => {
                        auths += 1;
                        assert!(!accepted && !refused);
                    }
                    Ok(Some(_)) => assert!(accepted && !refused, "events only while active"),
                    Ok(None) | Err(_) => {}
                }
            }
            1 if auths == 1 && !refused => {
                s.accept();
                accepted = true;
            }
            2 if !accepted => {
                s.reject();
                refused = true;
            }
            3 | 4 if accepted => {
                let signal = if op == 3 {
                    Signal::StartStream
                } else {
                    Signal::StopStream
                };
                let m = Message::new(0, signal).with_path(&[format!("r{}", arg % 4).as_str()]);
                sids.push(s.request(m));
            }
            5 if !sids.is_empty() => s.forget(sids[arg as usize % sids.len()]),
            6 if accepted => s.ack(u32::from(arg), arg % 2 == 0),
            7 if accepted => s.property((arg % 2 == 0).then(|| Value::Int(i64::from(arg)))),
            _ => {}
        }
        assert!(auths <= 1, "one AUTH per connection");
        whole_frames(&s.take_transmit());
        assert!(s.streams().count() <= 4, "one stream per path");
    }
});
