//! The BFD side of a session a hostile VM can reach: the packet decoder,
//! and a session in every state fed whatever the fuzzer makes. Nothing may
//! panic; a packet the decoder accepts re-encodes to one it accepts again
//! (authentication digests aside).

#![no_main]

use std::time::{Duration, Instant};

use bfd::{Config, Packet, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::decode(data) {
        let again = p.encode(b"");
        if p.auth.is_none() {
            let q = Packet::decode(&again).expect("re-encoded packet decodes");
            assert_eq!(q.my_discriminator, p.my_discriminator);
            assert_eq!(q.state, p.state);
        }
    }
    // A session, up to three steps into the handshake, then the input.
    let now = Instant::now();
    let mut s = Session::new(
        Config {
            local_discriminator: 7,
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
            auth: None,
            // Both ways, by the input's length.
            pin_peer: data.len() % 2 == 0,
        },
        now,
    );
    for chunk in data.chunks(24).take(4) {
        let _ = s.receive(now, chunk);
        if s.is_fresh() {
            let _ = s.take_over(now, chunk);
        }
        let _ = s.receive(now, data);
        s.handle_timeout(now + Duration::from_secs(1));
        while s.poll_transmit().is_some() {}
        while s.poll_event().is_some() {}
    }
});
