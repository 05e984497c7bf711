//! BFD control packets (RFC 5880 §4).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Auth Type   |   Auth Len    |    Authentication Data...     |  (optional)
//! ```

use sha1::{Digest, Sha1};

/// Session states (§4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

/// Diagnostic codes (§4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Diag {
    None = 0,
    ControlDetectionTimeExpired = 1,
    EchoFunctionFailed = 2,
    NeighborSignaledSessionDown = 3,
    ForwardingPlaneReset = 4,
    PathDown = 5,
    ConcatenatedPathDown = 6,
    AdministrativelyDown = 7,
    ReverseConcatenatedPathDown = 8,
}

impl Diag {
    fn from_bits(b: u8) -> Diag {
        match b & 0x1f {
            1 => Diag::ControlDetectionTimeExpired,
            2 => Diag::EchoFunctionFailed,
            3 => Diag::NeighborSignaledSessionDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            _ => Diag::None,
        }
    }
}

/// The authentication section (§4.2–§4.4), as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Type 1.
    SimplePassword { key_id: u8, password: Vec<u8> },
    /// Types 2 (keyed) and 3 (meticulous): MD5; parsed, not verified.
    Md5 {
        meticulous: bool,
        key_id: u8,
        sequence: u32,
        digest: [u8; 16],
    },
    /// Types 4 (keyed) and 5 (meticulous): SHA1.
    Sha1 {
        meticulous: bool,
        key_id: u8,
        sequence: u32,
        hash: [u8; 20],
    },
}

/// A control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub diag: Diag,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub control_plane_independent: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
    pub auth: Option<Auth>,
}

/// Why a received packet was discarded (§6.8.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discard {
    Truncated,
    Version(u8),
    Length(u8),
    DetectMultZero,
    Multipoint,
    MyDiscriminatorZero,
    BadAuth(&'static str),
    /// Well formed, but not for this session in its state (§6.8.6).
    NotForSession(&'static str),
}

impl std::fmt::Display for Discard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discard::Truncated => write!(f, "packet too short"),
            Discard::Version(v) => write!(f, "version {v}, not 1"),
            Discard::Length(l) => write!(f, "length field {l} does not fit the packet"),
            Discard::DetectMultZero => write!(f, "detect multiplier 0"),
            Discard::Multipoint => write!(f, "multipoint bit set"),
            Discard::MyDiscriminatorZero => write!(f, "my discriminator 0"),
            Discard::BadAuth(w) => write!(f, "authentication: {w}"),
            Discard::NotForSession(w) => write!(f, "{w}"),
        }
    }
}

impl Packet {
    /// Encodes the packet; with keyed SHA1 the hash is computed with `key`.
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(52);
        v.push((1 << 5) | (self.diag as u8 & 0x1f));
        let mut flags = (self.state as u8) << 6;
        if self.poll {
            flags |= 0x20;
        }
        if self.final_ {
            flags |= 0x10;
        }
        if self.control_plane_independent {
            flags |= 0x08;
        }
        if self.auth.is_some() {
            flags |= 0x04;
        }
        if self.demand {
            flags |= 0x02;
        }
        v.push(flags);
        v.push(self.detect_mult);
        v.push(0); // length, below
        for x in [
            self.my_discriminator,
            self.your_discriminator,
            self.desired_min_tx,
            self.required_min_rx,
            self.required_min_echo_rx,
        ] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        let mut hash_at = None;
        match &self.auth {
            None => {}
            Some(Auth::SimplePassword { key_id, password }) => {
                v.push(1);
                v.push(3 + password.len() as u8);
                v.push(*key_id);
                v.extend_from_slice(password);
            }
            Some(Auth::Md5 {
                meticulous,
                key_id,
                sequence,
                digest,
            }) => {
                v.push(if *meticulous { 3 } else { 2 });
                v.push(24);
                v.push(*key_id);
                v.push(0);
                v.extend_from_slice(&sequence.to_be_bytes());
                v.extend_from_slice(digest);
            }
            Some(Auth::Sha1 {
                meticulous,
                key_id,
                sequence,
                ..
            }) => {
                v.push(if *meticulous { 5 } else { 4 });
                v.push(28);
                v.push(*key_id);
                v.push(0);
                v.extend_from_slice(&sequence.to_be_bytes());
                hash_at = Some(v.len());
                // §6.7.4: the key, padded to 20 bytes, stands in the hash
                // field while the hash is computed.
                let mut k = [0u8; 20];
                let n = key.len().min(20);
                k[..n].copy_from_slice(&key[..n]);
                v.extend_from_slice(&k);
            }
        }
        v[3] = v.len() as u8;
        if let Some(at) = hash_at {
            let h = Sha1::digest(&v);
            v[at..at + 20].copy_from_slice(&h);
        }
        v
    }

    /// Decodes and validates a packet (§6.8.6, the checks that need no
    /// session). `key` verifies keyed SHA1 and simple passwords when the
    /// packet carries them.
    pub fn decode(buf: &[u8]) -> Result<Packet, Discard> {
        if buf.len() < 24 {
            return Err(Discard::Truncated);
        }
        let version = buf[0] >> 5;
        if version != 1 {
            return Err(Discard::Version(version));
        }
        let flags = buf[1];
        let auth_present = flags & 0x04 != 0;
        let len = buf[3];
        let min = if auth_present { 26 } else { 24 };
        if (len as usize) < min || len as usize > buf.len() {
            return Err(Discard::Length(len));
        }
        if buf[2] == 0 {
            return Err(Discard::DetectMultZero);
        }
        if flags & 0x01 != 0 {
            return Err(Discard::Multipoint);
        }
        let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        if word(4) == 0 {
            return Err(Discard::MyDiscriminatorZero);
        }
        let auth = if auth_present {
            let a = &buf[24..len as usize];
            let (atype, alen) = (a[0], a[1] as usize);
            if alen > a.len() || alen < 2 {
                return Err(Discard::BadAuth("auth length"));
            }
            Some(match (atype, alen) {
                (1, 4..=19) => Auth::SimplePassword {
                    key_id: a[2],
                    password: a[3..alen].to_vec(),
                },
                (2 | 3, 24) => Auth::Md5 {
                    meticulous: atype == 3,
                    key_id: a[2],
                    sequence: u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
                    digest: a[8..24]
                        .try_into()
                        .map_err(|_| Discard::BadAuth("md5 length"))?,
                },
                (4 | 5, 28) => Auth::Sha1 {
                    meticulous: atype == 5,
                    key_id: a[2],
                    sequence: u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
                    hash: a[8..28]
                        .try_into()
                        .map_err(|_| Discard::BadAuth("sha1 length"))?,
                },
                _ => return Err(Discard::BadAuth("unknown type or length")),
            })
        } else {
            None
        };
        Ok(Packet {
            diag: Diag::from_bits(buf[0]),
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: buf[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
            auth,
        })
    }
}

/// Checks keyed SHA1 (§6.7.4) over the received bytes with `key`.
pub fn verify_sha1(buf: &[u8], key: &[u8]) -> bool {
    if buf.len() < 52 || buf[3] as usize != 52 {
        return false;
    }
    let mut copy = buf[..52].to_vec();
    let received: [u8; 20] = match copy[32..52].try_into() {
        Ok(h) => h,
        Err(_) => return false,
    };
    let mut k = [0u8; 20];
    let n = key.len().min(20);
    k[..n].copy_from_slice(&key[..n]);
    copy[32..52].copy_from_slice(&k);
    Sha1::digest(&copy).as_slice() == received
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packet {
        Packet {
            diag: Diag::None,
            state: State::Down,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 7,
            your_discriminator: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
            auth: None,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let p = sample();
        let b = p.encode(&[]);
        assert_eq!(b.len(), 24);
        assert_eq!(&b[..4], &[0x20, 0x40, 3, 24]);
        assert_eq!(Packet::decode(&b).unwrap(), p);
    }

    #[test]
    fn validation_discards() {
        let b = sample().encode(&[]);
        assert_eq!(Packet::decode(&b[..20]), Err(Discard::Truncated));
        let mut v = b.clone();
        v[0] = 0x40;
        assert_eq!(Packet::decode(&v), Err(Discard::Version(2)));
        let mut v = b.clone();
        v[2] = 0;
        assert_eq!(Packet::decode(&v), Err(Discard::DetectMultZero));
        let mut v = b.clone();
        v[1] |= 1;
        assert_eq!(Packet::decode(&v), Err(Discard::Multipoint));
        let mut v = b.clone();
        v[4..8].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Packet::decode(&v), Err(Discard::MyDiscriminatorZero));
        let mut v = b.clone();
        v[3] = 40;
        assert_eq!(Packet::decode(&v), Err(Discard::Length(40)));
    }

    #[test]
    fn simple_password_and_keyed_sha1() {
        let mut p = sample();
        p.auth = Some(Auth::SimplePassword {
            key_id: 1,
            password: b"secret".to_vec(),
        });
        let b = p.encode(&[]);
        assert_eq!(b.len(), 24 + 3 + 6);
        assert_eq!(Packet::decode(&b).unwrap(), p);
        p.auth = Some(Auth::Sha1 {
            meticulous: true,
            key_id: 2,
            sequence: 9,
            hash: [0; 20],
        });
        let b = p.encode(b"key");
        assert_eq!(b.len(), 52);
        assert!(verify_sha1(&b, b"key"));
        assert!(!verify_sha1(&b, b"other"));
        let mut tampered = b.clone();
        tampered[2] = 4;
        assert!(!verify_sha1(&tampered, b"key"));
        match Packet::decode(&b).unwrap().auth {
            Some(Auth::Sha1 {
                meticulous: true,
                key_id: 2,
                sequence: 9,
                ..
            }) => {}
            a => panic!("{a:?}"),
        }
    }
}
