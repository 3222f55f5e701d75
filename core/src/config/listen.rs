//! `listen` addresses of the services' HTTP endpoints: `host:port`, `:port` (every IPv4
//! interface, as Go programs such as Prometheus exporters read it), `[v6]:port`, or a host name,
//! resolved when the config loads so that a name that does not resolve fails at start with its
//! key.

use serde::{de, Deserialize, Deserializer};
use std::net::{SocketAddr, ToSocketAddrs};

/// Parses one `listen` value.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let hint = "write host:port, :port or [ipv6]:port, e.g. \"127.0.0.1:8461\" or \":8461\"";
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port; {hint}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535; {hint}"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        // "::1:8461" could as well be an address without a port.
        None if host.contains(':') => {
            return Err(format!("{s:?}: put an IPv6 address in brackets; {hint}"))
        }
        None if host.is_empty() => "0.0.0.0",
        None => host,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: host {host:?} does not resolve ({e}); {hint}"))?
        .next()
        .ok_or_else(|| format!("{s:?}: host {host:?} has no address; {hint}"))
}

/// serde `deserialize_with` for the `listen` keys.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let raw = String::deserialize(d)?;
    parse_listen(&raw).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_operators_write() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8461"), "127.0.0.1:8461");
        assert_eq!(ok(":9101"), "0.0.0.0:9101");
        assert_eq!(ok("[::1]:8461"), "[::1]:8461");
        assert!(parse_listen("localhost:8462").unwrap().ip().is_loopback());
        for (bad, why) in [
            ("8461", "no port"),
            ("127.0.0.1:http", "not a number"),
            ("127.0.0.1:70000", "not a number"),
            ("::1:8461", "brackets"),
            ("no-such-host.invalid:8461", "does not resolve"),
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(why) && e.contains(":port"), "{bad}: {e}");
        }
    }
}
