//! Control packets: round trips and arbitrary input.

use bfd::packet::{Auth, Packet};
use bfd::{Diag, State};
use proptest::prelude::*;

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::AdminDown),
        Just(State::Down),
        Just(State::Init),
        Just(State::Up)
    ]
}

proptest! {
    #[test]
    fn round_trip(st in state(), poll in any::<bool>(), mult in 1u8.., my in 1u32.., your in any::<u32>(),
                  tx in any::<u32>(), rx in any::<u32>(), pw in prop::option::of(prop::collection::vec(any::<u8>(), 1..16))) {
        let p = Packet {
            diag: Diag::None,
            state: st,
            poll,
            final_: !poll,
            control_plane_independent: false,
            demand: false,
            detect_mult: mult,
            my_discriminator: my,
            your_discriminator: your,
            desired_min_tx: tx,
            required_min_rx: rx,
            required_min_echo_rx: 0,
            auth: pw.map(|password| Auth::SimplePassword { key_id: 3, password }),
        };
        prop_assert_eq!(Packet::decode(&p.encode(&[])).unwrap(), p);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = Packet::decode(&b);
    }
}
