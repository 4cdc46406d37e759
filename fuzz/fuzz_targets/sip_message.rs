//! Any bytes: parsing, framing and answering never panic, and what we serialise from an
//! accepted message is accepted again with the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::sip::message::{frame, parse, to_bytes, Frame};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(msg) => {
            let wire = to_bytes(&msg);
            let again = parse(&wire).expect("serialised message parses again");
            assert_eq!(again.body(), msg.body());
            assert_eq!(frame(&wire), Frame::Message(wire.len()));
        }
        Err(e) => {
            let _ = e.reply(400, "Bad Request");
            let _ = e.to_string();
        }
    }
    if let Frame::Message(n) | Frame::KeepAlive(n) = frame(data) {
        assert!(n > 0 && n <= data.len());
    }
});
