//! Message framing (RFC 4271 §4.1) and the message types.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                           Marker (16 octets of 1)             +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`Message::decode`] reads one whole message from the front of a buffer,
//! returns `Ok(None)` when more bytes are needed, and never panics on any
//! input.

use crate::notification::{self, Notification};
use crate::open::Open;
use crate::update::Update;
use crate::{AfiSafi, Context};

pub const HEADER_LEN: usize = 19;
pub const MAX_MESSAGE_LEN: usize = 4096;

pub mod kind {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// ROUTE-REFRESH (RFC 2918 §3; the subtype octet is RFC 7313's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: AfiSafi,
    pub subtype: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Box<Update>),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

/// Puts a header in front of `body`.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.extend_from_slice(&[0xff; 16]);
    v.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }

    /// Encodes a whole message, header included.
    pub fn encode(&self, cxt: &Context) -> Vec<u8> {
        match self {
            Message::Open(o) => {
                let mut b = Vec::new();
                o.encode_body(&mut b);
                frame(kind::OPEN, &b)
            }
            Message::Update(u) => u.encode(cxt),
            Message::Notification(n) => {
                let mut b = Vec::new();
                n.encode_body(&mut b);
                // Its data may quote a whole message (a ROUTE-REFRESH of
                // 4,096 bytes, RFC 7313 §5): cut to what one message holds,
                // as RFC 4271 §4.5 leaves the data's length to the sender.
                b.truncate(MAX_MESSAGE_LEN - HEADER_LEN);
                frame(kind::NOTIFICATION, &b)
            }
            Message::Keepalive => frame(kind::KEEPALIVE, &[]),
            Message::RouteRefresh(r) => {
                let mut b = r.family.afi.to_be_bytes().to_vec();
                b.push(r.subtype);
                b.push(r.family.safi);
                frame(kind::ROUTE_REFRESH, &b)
            }
        }
    }

    /// Decodes one message from the front of `buf`: `Ok(None)` if it is not
    /// all there yet, `Ok(Some((message, bytes_used)))`, or the NOTIFICATION
    /// that the error calls for (RFC 4271 §6.1; RFC 7606 for UPDATE).
    pub fn decode(buf: &[u8], cxt: &Context) -> Result<Option<(Message, usize)>, Notification> {
        if buf.len() < HEADER_LEN {
            // A wrong marker is reported as soon as it is seen.
            if buf.iter().take(16).any(|&b| b != 0xff) {
                return Err(Notification::new(
                    notification::code::MESSAGE_HEADER,
                    notification::header::CONNECTION_NOT_SYNCHRONIZED,
                ));
            }
            return Ok(None);
        }
        if buf[..16].iter().any(|&b| b != 0xff) {
            return Err(Notification::new(
                notification::code::MESSAGE_HEADER,
                notification::header::CONNECTION_NOT_SYNCHRONIZED,
            ));
        }
        let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
        let kind = buf[18];
        let bad_length = || {
            Notification::with_data(
                notification::code::MESSAGE_HEADER,
                notification::header::BAD_MESSAGE_LENGTH,
                (len as u16).to_be_bytes(),
            )
        };
        // RFC 4271 §6.1: length bounds for each type.
        let ok = match kind {
            kind::OPEN => len >= 29,
            kind::UPDATE => len >= 23,
            kind::NOTIFICATION => len >= 21,
            kind::KEEPALIVE => len == HEADER_LEN,
            kind::ROUTE_REFRESH => len >= 23,
            _ => {
                return Err(Notification::with_data(
                    notification::code::MESSAGE_HEADER,
                    notification::header::BAD_MESSAGE_TYPE,
                    [kind],
                ))
            }
        };
        if !ok || len > cxt.max_message_len {
            return Err(bad_length());
        }
        if buf.len() < len {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..len];
        let msg = match kind {
            kind::OPEN => Message::Open(Open::decode_body(body)?),
            kind::UPDATE => Message::Update(Box::new(Update::decode_body(body, cxt)?)),
            kind::NOTIFICATION => {
                Message::Notification(Notification::decode_body(body).ok_or_else(bad_length)?)
            }
            kind::KEEPALIVE => Message::Keepalive,
            _ => {
                // RFC 7313 §5: a ROUTE-REFRESH of subtype 0-2 with the
                // wrong length is an error; other subtypes are ignored
                // whatever their length (§4).
                if body.len() != 4 && body[2] <= 2 {
                    return Err(Notification::with_data(
                        notification::code::ROUTE_REFRESH,
                        1,
                        &buf[..len],
                    ));
                }
                Message::RouteRefresh(RouteRefresh {
                    family: AfiSafi {
                        afi: u16::from_be_bytes([body[0], body[1]]),
                        safi: body[3],
                    },
                    subtype: body[2],
                })
            }
        };
        Ok(Some((msg, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors() {
        let cxt = Context::default();
        let mut k = frame(kind::KEEPALIVE, &[]);
        assert_eq!(
            Message::decode(&k, &cxt).unwrap().unwrap(),
            (Message::Keepalive, 19)
        );
        assert_eq!(Message::decode(&k[..10], &cxt).unwrap(), None);
        k[3] = 0;
        assert_eq!(Message::decode(&k, &cxt).unwrap_err().subcode, 1);
        let mut k = frame(kind::KEEPALIVE, &[0]);
        assert_eq!(
            Message::decode(&k, &cxt).unwrap_err(),
            Notification::with_data(1, 2, [0, 20])
        );
        k[18] = 9;
        assert_eq!(
            Message::decode(&k, &cxt).unwrap_err(),
            Notification::with_data(1, 3, [9])
        );
        let mut big = frame(kind::UPDATE, &[0; 5000]);
        big.truncate(100);
        assert_eq!(Message::decode(&big, &cxt).unwrap_err().subcode, 2);
    }

    #[test]
    fn a_notification_quoting_a_whole_message_fits_in_one() {
        // A ROUTE-REFRESH of subtype 0 padded to 4,096 bytes: Invalid
        // Message Length, quoting it, in a message of at most 4,096 bytes.
        let mut body = vec![0, 1, 0, 1];
        body.resize(MAX_MESSAGE_LEN - HEADER_LEN, 0);
        let big = frame(kind::ROUTE_REFRESH, &body);
        let n = Message::decode(&big, &Context::default()).unwrap_err();
        assert_eq!((n.code, n.subcode), (7, 1));
        let out = Message::Notification(n).encode(&Context::default());
        assert_eq!(out.len(), MAX_MESSAGE_LEN);
        let (back, _) = Message::decode(&out, &Context::default()).unwrap().unwrap();
        let Message::Notification(back) = back else {
            panic!("{back:?}")
        };
        assert_eq!(back.data[..], big[..MAX_MESSAGE_LEN - HEADER_LEN - 2]);
    }

    #[test]
    fn route_refresh_round_trip() {
        let cxt = Context::default();
        let m = Message::RouteRefresh(RouteRefresh {
            family: AfiSafi::IPV6_UNICAST,
            subtype: 0,
        });
        let b = m.encode(&cxt);
        assert_eq!(b.len(), 23);
        assert_eq!(Message::decode(&b, &cxt).unwrap().unwrap().0, m);
    }
}
