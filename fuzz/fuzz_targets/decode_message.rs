//! The BGP message decoder with an arbitrary negotiated context: it must
//! never panic, and whatever it accepts must re-encode to something it
//! accepts again.

#![no_main]

use bgp::{AfiSafi, Context, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let mut families = Vec::new();
    if flags & 1 != 0 {
        families.push(AfiSafi::IPV4_UNICAST);
    }
    if flags & 2 != 0 {
        families.push(AfiSafi::IPV6_UNICAST);
    }
    let cxt = Context {
        four_octet_as: flags & 4 != 0,
        families,
        ipv4_over_ipv6_next_hop: flags & 8 != 0,
        max_message_len: 4096,
        external: flags & 16 != 0,
    };
    if let Ok(Some((msg, used))) = Message::decode(bytes, &cxt) {
        assert!(used <= bytes.len());
        let again = msg.encode(&cxt);
        if again.len() <= 4096 {
            assert!(
                Message::decode(&again, &cxt).is_ok(),
                "re-encoded message does not decode: {msg:?}"
            );
        }
    }
});
