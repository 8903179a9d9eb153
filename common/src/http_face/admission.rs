//! Who gets a place on an HTTP face, so that no one source can lock it: a source
//! holds at most [`PER_SOURCE`] of its [`GENERAL`] places, and when those are all taken
//! [`RESERVED`] more are kept for the mesh's own nodes (one each), for the short requests the
//! mesh runs on: a neighbour's `/nodeinfo.json` and a gateway lease. A source is an IPv4
//! address or an overlay node's address; any other IPv6 address counts by its /64, which one
//! host can fill with addresses of its own. The bookkeeping is one small table, never larger
//! than the places themselves.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Places for anyone.
pub const GENERAL: usize = 32;
/// Places one source may hold. A neighbour's meshd uses at most six for chunks (its
/// `chunk_fetch::PER_NEIGHBOUR`), one for its mesh view, one for its rollout's look at this
/// node and one for a lease.
pub const PER_SOURCE: usize = 10;
/// Places kept for nodes of the mesh view when the general ones are all taken.
pub const RESERVED: usize = 4;

/// What a connection holds while it is served; its place comes back when it is dropped.
pub struct Place {
    places: Arc<Places>,
    source: IpAddr,
    /// A kept place: only the mesh's short requests are served on it.
    pub reserved: bool,
    /// Three quarters of the general places were taken when this one was given: its request
    /// gets a short deadline for its headers.
    pub crowded: bool,
}

/// Why a connection got no place.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds [`PER_SOURCE`] places already.
    Source,
    /// Every place it may take is taken.
    Full,
}

impl Refused {
    /// The few bytes a refused connection is sent before it is closed, so an honest client
    /// knows to come back (HTTP 503 with Retry-After), without reading its request.
    pub fn reply(&self) -> &'static [u8] {
        match self {
            Refused::Source => {
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 44\r\n\r\nbusy: your address holds too many requests\r\n"
            }
            Refused::Full => b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 42\r\n\r\nbusy: serving as many requests as it can\r\n",
        }
    }
}

#[derive(Default)]
struct Held {
    general: usize,
    reserved: usize,
    /// Source → places it holds, and whether one of them is a kept one.
    by_source: HashMap<IpAddr, (usize, bool)>,
}

#[derive(Default)]
pub struct Places {
    held: Mutex<Held>,
}

impl Places {
    /// A place for a connection from `peer`, if it may have one; `known` says whether the
    /// peer is a node of the mesh view (asked only when the general places are all taken).
    pub fn admit(self: &Arc<Self>, peer: IpAddr, known: impl FnOnce(IpAddr) -> bool) -> Result<Place, Refused> {
        let source = source(peer);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (count, has_reserved) = held.by_source.get(&source).copied().unwrap_or_default();
        if count >= PER_SOURCE {
            return Err(Refused::Source);
        }
        let crowded = held.general * 4 >= GENERAL * 3;
        let reserved = if held.general < GENERAL {
            held.general += 1;
            false
        } else if held.reserved < RESERVED && !has_reserved && known(peer) {
            held.reserved += 1;
            true
        } else {
            return Err(Refused::Full);
        };
        held.by_source.insert(source, (count + 1, has_reserved || reserved));
        Ok(Place { places: self.clone(), source, reserved, crowded })
    }

    /// Places taken now: general and kept.
    #[cfg(test)]
    fn taken(&self) -> (usize, usize, usize) {
        let held = self.held.lock().unwrap();
        (held.general, held.reserved, held.by_source.len())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.places.held.lock().unwrap_or_else(|e| e.into_inner());
        if self.reserved {
            held.reserved -= 1;
        } else {
            held.general -= 1;
        }
        let gone = match held.by_source.get_mut(&self.source) {
            Some(entry) => {
                entry.0 -= 1;
                entry.1 &= !self.reserved;
                entry.0 == 0
            }
            None => false,
        };
        if gone {
            held.by_source.remove(&self.source);
        }
    }
}

/// The source a connection from `ip` counts against.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // A node's address on Yggdrasil (200::/8) or cjdns (fc00::/8) is its key's.
            None if matches!(a.octets()[0], 0x02 | 0xfc) => ip,
            None => {
                let s = a.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_are_addresses_or_prefixes() {
        assert_eq!(source(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(source(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(source(ip("200:1:2:3:4:5:6:7")), ip("200:1:2:3:4:5:6:7"));
        assert_eq!(source(ip("fc12:1:2:3:4:5:6:7")), ip("fc12:1:2:3:4:5:6:7"));
        // A node's clients (Yggdrasil's 300::/64 of the node), a LAN, link-local: by /64.
        assert_eq!(source(ip("300:1:2:3:4:5:6:7")), ip("300:1:2:3::"));
        assert_eq!(source(ip("2001:db8:0:1::99")), source(ip("2001:db8:0:1:ffff::1")));
        assert_ne!(source(ip("2001:db8:0:1::99")), source(ip("2001:db8:0:2::99")));
    }

    #[test]
    fn one_source_holds_a_share_and_the_mesh_keeps_a_way_in() {
        let places = Arc::new(Places::default());
        let never = |_| false;
        let greedy: Vec<Place> = (0..PER_SOURCE).map(|_| places.admit(ip("200::66"), never).unwrap()).collect();
        assert_eq!(places.admit(ip("200::66"), never).err(), Some(Refused::Source));
        // Its /64 is one source too, however many addresses it takes in it.
        let lan: Vec<Place> = (0..PER_SOURCE).map(|i| places.admit(ip(&format!("2001:db8::{i:x}")), never).unwrap()).collect();
        assert_eq!(places.admit(ip("2001:db8::ffff"), never).err(), Some(Refused::Source));
        // Many sources fill the general places; the last given are crowded.
        let rest: Vec<Place> = (0..GENERAL - 2 * PER_SOURCE).map(|i| places.admit(ip(&format!("10.0.0.{i}")), never).unwrap()).collect();
        assert!(rest.last().unwrap().crowded && !greedy[0].crowded);
        assert_eq!(places.admit(ip("10.0.1.1"), never).err(), Some(Refused::Full));
        // A node of the mesh gets a kept place, one at a time; a stranger does not.
        let known = |p: IpAddr| p == ip("200::1") || p == ip("200::2");
        let kept = places.admit(ip("200::1"), known).unwrap();
        assert!(kept.reserved);
        assert_eq!(places.admit(ip("200::1"), known).err(), Some(Refused::Full));
        assert_eq!(places.admit(ip("200::3"), known).err(), Some(Refused::Full));
        assert!(places.admit(ip("200::2"), known).unwrap().reserved);
        assert_eq!(places.taken(), (GENERAL, 1, 2 + GENERAL - 2 * PER_SOURCE + 1));
        // Places come back as connections end, and the table forgets sources that hold none.
        drop(kept);
        assert!(places.admit(ip("200::1"), known).unwrap().reserved);
        drop((greedy, lan, rest));
        assert_eq!(places.taken(), (0, 0, 0));
        assert!(!places.admit(ip("200::66"), never).unwrap().reserved);
    }

    #[test]
    fn refusals_are_whole_http_replies() {
        for r in [Refused::Source, Refused::Full] {
            let text = std::str::from_utf8(r.reply()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}", body.len())), "{text:?}");
        }
    }
}
