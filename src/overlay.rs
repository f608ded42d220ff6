//! Offline prediction of wesher overlay addresses.
//!
//! wesher (github.com/costela/wesher) gives every node an IPv4 address inside
//! the overlay network (`--overlay-net`, default `10.0.0.0/8`) derived only
//! from the node's hostname, so mesh can know each host's overlay IP before
//! wesher runs there. The algorithm, from wesher's `wg/wireguard.go`
//! (`(*State).assignOverlayAddr`):
//!
//! ```text
//! bits, size := ipnet.Mask.Size()
//! ip := copy of ipnet.IP                 // the network address (host bits clear)
//! hb := fnv.New128a() over []byte(name), .Sum(nil)   // 16 bytes, big-endian
//! for i := 1; i <= (size-bits)/8; i++ { ip[len(ip)-i] = hb[len(hb)-i] }
//! ```
//!
//! That is: the last `(32 - prefix) / 8` bytes of the address are replaced by
//! the last bytes of the FNV-128a hash of the hostname. There is no special
//! handling of network or broadcast addresses (wesher puts the result on the
//! interface as a /32, so `.0` and `.255` are valid overlay addresses), and
//! no collision avoidance. wesher's `config.go` refuses overlay nets whose
//! prefix length is not a multiple of 8, and parses the net with Go's
//! `net.ParseCIDR`, which clears host bits; [`OverlayNet`]'s parser does both.
//!
//! The name hashed is the memberlist node name, which defaults to the OS
//! hostname (`os.Hostname()`), so the host's hostname must be set to its
//! inventory name before wesher first starts.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// FNV-128 offset basis (144066263297769815596495629667062367629).
const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
/// FNV-128 prime, 2^88 + 2^8 + 0x3b (309485009821345068724781371).
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// FNV-128a of bytes, as Go's hash/fnv New128a().Sum(nil) returns it (16 bytes big-endian).
pub fn fnv128a(data: &[u8]) -> [u8; 16] {
    let mut hash = FNV128_OFFSET;
    for &byte in data {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(FNV128_PRIME);
    }
    hash.to_be_bytes()
}

/// An IPv4 overlay network in CIDR form, as wesher's `--overlay-net` takes it.
///
/// Parsed values always hold the network address (host bits cleared) and a
/// prefix length that is a multiple of 8, like wesher itself requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayNet {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length (0..=32).
    pub prefix: u8,
}

impl OverlayNet {
    /// wesher's default `--overlay-net`.
    pub const DEFAULT: &'static str = "10.0.0.0/8";

    /// The network mask as a 32-bit integer.
    fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p if p >= 32 => u32::MAX,
            p => u32::MAX << (32 - u32::from(p)),
        }
    }

    /// The network address with any host bits cleared.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    #[cfg(test)]
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl Default for OverlayNet {
    fn default() -> Self {
        OverlayNet {
            addr: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 8,
        }
    }
}

impl fmt::Display for OverlayNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// Error for a string that is not an IPv4 CIDR net wesher accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOverlayNetError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for ParseOverlayNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid overlay network \"{}\": {} (expected IPv4 CIDR like {}, \
             prefix length a multiple of 8)",
            self.input,
            self.reason,
            OverlayNet::DEFAULT
        )
    }
}

impl std::error::Error for ParseOverlayNetError {}

impl FromStr for OverlayNet {
    type Err = ParseOverlayNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseOverlayNetError {
            input: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing /prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("prefix length is not a number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        if prefix > 32 {
            return Err(err("prefix length is larger than 32"));
        }
        if !matches!(prefix, 0 | 8 | 16 | 24 | 32) {
            return Err(err(
                "wesher only supports prefix lengths that are multiples of 8",
            ));
        }
        let net = OverlayNet { addr, prefix };
        Ok(OverlayNet {
            addr: net.network(),
            prefix,
        })
    }
}

/// The overlay IP wesher gives the node `hostname` in `net`.
///
/// Mirrors wesher's `assignOverlayAddr` byte for byte: the last
/// `(32 - prefix) / 8` bytes of the network address are replaced by the last
/// bytes of [`fnv128a`] of the hostname's UTF-8 bytes. (For a prefix that is
/// not a multiple of 8, which [`OverlayNet::from_str`] rejects and wesher
/// refuses, the integer division is kept as wesher's code has it.)
pub fn overlay_ip(net: &OverlayNet, hostname: &str) -> Ipv4Addr {
    let mut ip = net.network().octets();
    let hash = fnv128a(hostname.as_bytes());
    let replaced = (32 - usize::from(net.prefix.min(32))) / 8;
    for i in 1..=replaced {
        ip[ip.len() - i] = hash[hash.len() - i];
    }
    Ipv4Addr::from(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn net(s: &str) -> OverlayNet {
        s.parse().unwrap()
    }

    #[test]
    fn fnv128a_known_vectors() {
        // Vectors from Go's hash/fnv tests, re-checked with the independent
        // Python implementation in tests/fixtures/wesher_overlay_ip.py.
        assert_eq!(hex(&fnv128a(b"")), "6c62272e07bb014262b821756295c58d");
        assert_eq!(hex(&fnv128a(b"a")), "d228cb696f1a8caf78912b704e4a8964");
        assert_eq!(hex(&fnv128a(b"foobar")), "343e1662793c64bf6f0d3597ba446f18");
        assert_eq!(hex(&fnv128a(b"test")), "69d061a9c5757277b806e99413dd99a5");
    }

    #[test]
    fn fnv128a_constants_match_spec() {
        assert_eq!(FNV128_OFFSET, 144066263297769815596495629667062367629);
        assert_eq!(FNV128_PRIME, 309485009821345068724781371);
        assert_eq!(FNV128_PRIME, (1u128 << 88) + (1 << 8) + 0x3b);
    }

    /// Expected values were computed by tests/fixtures/wesher_overlay_ip.py,
    /// a line-by-line Python port of wesher's Go `assignOverlayAddr` with its
    /// own FNV-128a (run it with no arguments to print this table). The two
    /// `"test"` rows are also wesher's own unit-test expectations
    /// (wg/wireguard_test.go: 10.221.153.165 in /8, 10.0.0.165 in /24).
    const CASES: &[(&str, &str, [u8; 4])] = &[
        ("10.0.0.0/8", "test", [10, 221, 153, 165]),
        ("10.0.0.0/24", "test", [10, 0, 0, 165]),
        ("10.0.0.0/8", "node1", [10, 59, 73, 60]),
        ("10.0.0.0/8", "bastion-1", [10, 138, 152, 189]),
        ("10.0.0.0/8", "db-eu-2", [10, 35, 127, 7]),
        ("10.0.0.0/8", "worker.example.com", [10, 89, 204, 68]),
        ("10.0.0.0/8", "", [10, 149, 197, 141]),
        ("172.16.0.0/16", "node1", [172, 16, 73, 60]),
        ("192.168.7.0/24", "node1", [192, 168, 7, 60]),
        ("10.1.2.3/8", "node1", [10, 59, 73, 60]),
        ("0.0.0.0/0", "test", [19, 221, 153, 165]),
        ("10.9.8.7/32", "test", [10, 9, 8, 7]),
        ("10.0.0.0/8", "n\u{f6}de", [10, 106, 161, 163]),
    ];

    #[test]
    fn overlay_ip_matches_wesher_reference() {
        for &(n, name, want) in CASES {
            assert_eq!(
                overlay_ip(&net(n), name),
                Ipv4Addr::from(want),
                "overlay_ip({n}, {name:?})"
            );
        }
    }

    #[test]
    fn overlay_ip_always_inside_net() {
        for n in [
            "10.0.0.0/8",
            "172.16.0.0/16",
            "192.168.50.0/24",
            "100.64.0.0/16",
        ] {
            let net = net(n);
            for i in 0..500 {
                let name = format!("host-{i}.example");
                let ip = overlay_ip(&net, &name);
                assert!(net.contains(ip), "{ip} not in {net} for {name}");
                assert_eq!(ip, overlay_ip(&net, &name), "deterministic");
            }
        }
    }

    #[test]
    fn smaller_nets_keep_the_low_bytes() {
        // /16 and /24 take the same trailing hash bytes as /8.
        let big = overlay_ip(&net("10.0.0.0/8"), "node1").octets();
        let mid = overlay_ip(&net("172.16.0.0/16"), "node1").octets();
        let small = overlay_ip(&net("192.168.7.0/24"), "node1").octets();
        assert_eq!(mid[2..], big[2..]);
        assert_eq!(small[3], big[3]);
        assert_eq!(mid[..2], [172, 16]);
        assert_eq!(small[..3], [192, 168, 7]);
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(net(OverlayNet::DEFAULT), OverlayNet::default());
        assert_eq!(
            net("172.16.0.0/16"),
            OverlayNet {
                addr: Ipv4Addr::new(172, 16, 0, 0),
                prefix: 16
            }
        );
        // Host bits are cleared, like Go's net.ParseCIDR.
        assert_eq!(net("10.1.2.3/8").addr, Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(net("192.168.7.9/24").to_string(), "192.168.7.0/24");
        assert_eq!(OverlayNet::default().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn parse_errors_name_the_expected_form() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/12",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "10.0.0/8",
            "fd00::/8",
            "",
            "x/8",
        ] {
            let err = bad.parse::<OverlayNet>().unwrap_err().to_string();
            assert!(
                err.contains("expected IPv4 CIDR like 10.0.0.0/8"),
                "{bad}: {err}"
            );
            assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
        }
        let err = "10.0.0.0/12".parse::<OverlayNet>().unwrap_err().to_string();
        assert!(err.contains("multiples of 8"), "{err}");
    }

    #[test]
    fn contains_checks_the_prefix() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(Ipv4Addr::new(10, 255, 255, 255)));
        assert!(n.contains(Ipv4Addr::new(10, 0, 0, 0)));
        assert!(!n.contains(Ipv4Addr::new(11, 0, 0, 1)));
        let n = net("192.168.7.0/24");
        assert!(n.contains(Ipv4Addr::new(192, 168, 7, 200)));
        assert!(!n.contains(Ipv4Addr::new(192, 168, 8, 1)));
        assert!(net("0.0.0.0/0").contains(Ipv4Addr::new(1, 2, 3, 4)));
        let host = net("10.9.8.7/32");
        assert!(host.contains(Ipv4Addr::new(10, 9, 8, 7)));
        assert!(!host.contains(Ipv4Addr::new(10, 9, 8, 6)));
    }

    #[test]
    fn struct_literal_with_host_bits_is_masked() {
        let n = OverlayNet {
            addr: Ipv4Addr::new(10, 1, 2, 3),
            prefix: 8,
        };
        assert_eq!(overlay_ip(&n, "node1"), Ipv4Addr::new(10, 59, 73, 60));
        assert!(n.contains(Ipv4Addr::new(10, 59, 73, 60)));
    }
}
