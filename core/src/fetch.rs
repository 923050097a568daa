//! Fetching an image by URL, for background workers that embed images stored as links.
//!
//! # Threat model: server-side request forgery
//!
//! The URLs come from table rows, so whoever can write a row chooses what the database
//! server connects to. Without rules that is a way into everything the server can reach and
//! its users cannot: the cloud metadata service (169.254.169.254), services bound to
//! loopback, the private network behind the firewall, other ports of an allowed host. The
//! server's answer need not even come back: timing and error messages leak enough to
//! scan a network. So a fetch goes only where a superuser said it may:
//!
//! - **Schemes.** `http://` and `https://` only. https verifies the server's certificate
//!   against Mozilla's root certificates compiled in (`webpki-roots`; rustls, no OpenSSL,
//!   no system store). URLs with credentials (`user@host`) are refused, as are host names
//!   that are not plain ASCII DNS names (use the `xn--` form) or numeric forms that are not
//!   dotted-quad IPv4 (`2130706433`, `0x7f.1`: resolvers read them as addresses).
//! - **Allowlist.** The host (and port) must match an entry of the [`Allowlist`]: a name
//!   (`images.example.com`), all names under a domain (`*.cdn.example.com`, not the domain
//!   itself), or an address (`203.0.113.7`, `[2001:db8::1]`), each optionally with a
//!   port. An entry without a port allows ports 80 and 443 only, so an allowed host's other
//!   services stay out of reach. Nothing matches an empty list.
//! - **Addresses.** The host is resolved once, every address it resolves to is checked,
//!   and the connection goes to a checked address (no second lookup, so DNS rebinding
//!   cannot swap in another address between check and connect). If any address is
//!   loopback, private (RFC 1918, fc00::/7), link-local (169.254/16, fe80::/10), shared
//!   (CGNAT, 100.64/10), reserved, documentation, benchmarking, or an IPv6 form embedding
//!   one of those (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), the fetch is refused
//!   unless the entry that allowed the URL names that host or address itself: a wildcard
//!   entry never reaches them. Unspecified (0.0.0.0/8, ::), multicast and broadcast
//!   addresses are refused always. [`address_class`] is the table.
//! - **Redirects.** 301, 302, 303, 307 and 308 are followed up to `max_redirects` times,
//!   each target checked as above as if it were the first URL; https never redirects to
//!   http.
//! - **Size.** A `Content-Length` over `max_bytes` is refused before the body is read; a
//!   chunked or close-delimited body is refused as soon as it passes `max_bytes`. The body
//!   buffer never holds more than `max_bytes`; a response head is at most 64 kB.
//! - **Time.** One deadline (`timeout`) bounds the whole fetch, redirects included: name
//!   resolution and connecting (on a helper thread, which the caller stops waiting for at
//!   the deadline), sending, and every read (socket timeouts from the time left), so a
//!   server that drips bytes still hits it. `stop` is polled at least every 50 ms.
//! - **Messages.** Errors name the URL cut to 200 characters (query strings can hold
//!   signatures), never the body.
//!
//! The HTTP/1.1 client is written here on `std::net` (GET, `Connection: close`,
//! `Content-Length`, chunked and close-delimited bodies, no compression, no proxies, no
//! cookies) rather than taken from a crate, so that name resolution, the address check
//! and every socket wait are under these rules, and `stop` is heard while waiting.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{check_stop, Error, Fact, FetchProblem, Kind, Limit, Result};

/// How often a wait wakes up to poll `stop` and the deadline.
const POLL: Duration = Duration::from_millis(50);
/// The most bytes of a response head (status line and headers).
const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// The most bytes of a chunk-size line or trailer line of a chunked body.
const MAX_CHUNK_LINE: u64 = 4096;
/// The longest URL fetched.
pub const MAX_URL_BYTES: usize = 8192;
/// URLs in messages are cut to this many characters.
const URL_IN_MESSAGE: usize = 200;
/// Read size for close-delimited bodies.
const READ_CHUNK: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------
// Errors

fn fetch_error(kind: Kind, problem: FetchProblem, message: impl Into<String>) -> Error {
    Error::new(kind, message).with_fact(Fact::Fetch(problem))
}

/// `url` for a message: at most 200 characters, control characters replaced.
fn shown(url: &str) -> String {
    let mut out: String =
        url.chars().take(URL_IN_MESSAGE).map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect();
    if url.chars().nth(URL_IN_MESSAGE).is_some() {
        out.push_str("...");
    }
    out
}

fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{} ms", ms)
    }
}

/// Whether a failed fetch is worth trying again later: the deadline, a refused or broken
/// connection, a failed name lookup (often passing), HTTP 408, 425, 429 and 5xx other
/// than 501 and 505, or a stop request (the URL did not fail). Everything else is lasting
/// until someone changes the URL, the allowlist, the limits or the server: a malformed or
/// refused URL, a refused address, an image over the size limit, 4xx, TLS certificate
/// failures, malformed responses, redirect trouble.
pub fn retryable(e: &Error) -> bool {
    if e.kind == Kind::Interrupted {
        return true;
    }
    match e.fact {
        Some(Fact::Fetch(p)) => match p {
            FetchProblem::Resolve | FetchProblem::Connect | FetchProblem::Timeout | FetchProblem::Io => true,
            FetchProblem::Status(s) => {
                matches!(s, 408 | 425 | 429) || ((500..600).contains(&s) && s != 501 && s != 505)
            }
            FetchProblem::BadAllowlist
            | FetchProblem::BadUrl
            | FetchProblem::NotAllowed
            | FetchProblem::AddressRefused
            | FetchProblem::Tls
            | FetchProblem::Protocol
            | FetchProblem::Redirect => false,
        },
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Addresses

/// What an address is to a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// A public unicast address: any allowlist entry that matches the URL reaches it.
    Public,
    /// Reachable only when the matching entry names the host or address itself (not a
    /// wildcard); says what the address is.
    Restricted(&'static str),
    /// Never a fetch's destination; says what the address is.
    Never(&'static str),
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], bits: u32) -> bool {
    let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
    let net = Ipv6Addr::new(net[0], net[1], net[2], net[3], net[4], net[5], net[6], net[7]);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    const TABLE: &[([u8; 4], u32, AddressClass)] = &[
        ([0, 0, 0, 0], 8, Never("unspecified (\"this network\", 0.0.0.0/8)")),
        ([255, 255, 255, 255], 32, Never("broadcast")),
        ([224, 0, 0, 0], 4, Never("multicast")),
        ([127, 0, 0, 0], 8, Restricted("loopback")),
        ([10, 0, 0, 0], 8, Restricted("private (RFC 1918)")),
        ([172, 16, 0, 0], 12, Restricted("private (RFC 1918)")),
        ([192, 168, 0, 0], 16, Restricted("private (RFC 1918)")),
        ([169, 254, 0, 0], 16, Restricted("link-local")),
        ([100, 64, 0, 0], 10, Restricted("shared address space (carrier-grade NAT)")),
        ([192, 0, 0, 0], 24, Restricted("IETF protocol assignments")),
        ([192, 0, 2, 0], 24, Restricted("documentation")),
        ([198, 51, 100, 0], 24, Restricted("documentation")),
        ([203, 0, 113, 0], 24, Restricted("documentation")),
        ([198, 18, 0, 0], 15, Restricted("benchmarking")),
        ([192, 88, 99, 0], 24, Restricted("6to4 relay anycast")),
        ([240, 0, 0, 0], 4, Restricted("reserved")),
    ];
    TABLE.iter().find(|(net, bits, _)| in_v4(ip, *net, *bits)).map_or(Public, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let v4_at = |byte: usize| {
        let o = ip.octets();
        Ipv4Addr::new(o[byte], o[byte + 1], o[byte + 2], o[byte + 3])
    };
    if ip.is_unspecified() {
        return Never("unspecified");
    }
    if in_v6(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        return Never("multicast");
    }
    if ip.is_loopback() {
        return Restricted("loopback");
    }
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) {
        // IPv4-mapped: a connection to it is a connection to the IPv4 address.
        return classify_v4(v4_at(12));
    }
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        // NAT64's well-known prefix reaches the embedded IPv4 address.
        return match classify_v4(v4_at(12)) {
            Public => Public,
            _ => Restricted("NAT64 of a non-public IPv4 address"),
        };
    }
    if in_v6(ip, [0, 0, 0, 0, 0, 0, 0, 0], 96) {
        return Restricted("IPv4-compatible (deprecated)");
    }
    if in_v6(ip, [0xfc00, 0, 0, 0, 0, 0, 0, 0], 7) {
        return Restricted("unique local (fc00::/7)");
    }
    if in_v6(ip, [0xfe80, 0, 0, 0, 0, 0, 0, 0], 10) {
        return Restricted("link-local");
    }
    if in_v6(ip, [0xfec0, 0, 0, 0, 0, 0, 0, 0], 10) {
        return Restricted("site-local (deprecated)");
    }
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Restricted("not global unicast");
    }
    if in_v6(ip, [0x2001, 0x0db8, 0, 0, 0, 0, 0, 0], 32) || in_v6(ip, [0x3fff, 0, 0, 0, 0, 0, 0, 0], 20) {
        return Restricted("documentation");
    }
    if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 23) {
        return Restricted("IETF protocol assignments (Teredo, benchmarking, ORCHID)");
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return Restricted("6to4");
    }
    Public
}

/// What `ip` is to a fetch: public, reachable only through an entry naming it, or never.
pub fn address_class(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

// ---------------------------------------------------------------------------------------
// Allowlist

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// One host name, lower case, no trailing dot.
    Name(String),
    /// Every name under this domain (`*.` stripped), not the domain itself.
    Under(String),
    /// One address.
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pattern: Pattern,
    /// `None`: ports 80 and 443.
    port: Option<u16>,
}

/// The hosts a fetch may reach: a comma-separated list of `name`, `*.domain`, IPv4,
/// `[IPv6]` (or a bare IPv6 address without a port), each optionally `:port`. Whitespace
/// around entries is ignored; an empty or blank text allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

/// How an allowlist lets a URL through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permit {
    /// Only through a wildcard entry: public addresses only.
    Wildcard,
    /// Through an entry that names the host or address itself.
    Explicit,
}

fn bad_allowlist(entry: &str, why: &str) -> Error {
    fetch_error(
        Kind::InvalidArgument,
        FetchProblem::BadAllowlist,
        format!("invalid URL allowlist entry \"{}\": {why}", shown(entry)),
    )
    .with_hint(
        "write comma-separated entries such as images.example.com, *.cdn.example.com, images.example.com:8080, \
         203.0.113.7 or [2001:db8::1]:8080",
    )
}

fn parse_port(text: &str) -> std::result::Result<u16, &'static str> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number from 1 to 65535");
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

/// Checks a host name as a DNS name and returns it in lower case without a trailing dot:
/// ASCII letters, digits and hyphens, labels of 1 to 63 bytes, at most 253 bytes, and a
/// last label that is not numeric (resolvers read `2130706433` or `0x7f.1` as addresses).
fn dns_name(host: &str) -> std::result::Result<String, &'static str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("the host is empty");
    }
    if !host.is_ascii() {
        return Err("the host is not ASCII: write an international name in its xn-- form");
    }
    if host.len() > 253 {
        return Err("the host name is longer than 253 bytes");
    }
    let host = host.to_ascii_lowercase();
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("the host name has an empty label or one longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("the host name has characters other than letters, digits, hyphens and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of the host name starts or ends with a hyphen");
        }
    }
    let last = host.rsplit('.').next().unwrap_or("");
    let hex = last.strip_prefix("0x").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err("the host is neither a dotted-quad IPv4 address nor a name (its last label is a number)");
    }
    Ok(host)
}

/// Splits `host[:port]` or `[v6][:port]`; a bare IPv6 address has no port.
fn split_host_port(text: &str) -> std::result::Result<(&str, Option<&str>, bool), &'static str> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("'[' without ']'")?;
        return match after {
            "" => Ok((inside, None, true)),
            _ => after.strip_prefix(':').map(|p| (inside, Some(p), true)).ok_or("text after ']' is not ':port'"),
        };
    }
    if text.parse::<Ipv6Addr>().is_ok() {
        return Ok((text, None, true));
    }
    Ok(match text.split_once(':') {
        Some((h, p)) => (h, Some(p), false),
        None => (text, None, false),
    })
}

impl Allowlist {
    /// Parses the comma-separated allowlist text. Empty or blank: nothing allowed.
    pub fn parse(text: &str) -> Result<Allowlist> {
        let mut entries = Vec::new();
        if text.trim().is_empty() {
            return Ok(Allowlist { entries });
        }
        for raw in text.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                return Err(bad_allowlist(text, "an entry is empty (two commas in a row, or a comma at an end)"));
            }
            if item.contains("://") || item.contains('/') {
                return Err(bad_allowlist(item, "write the host only, without scheme or path"));
            }
            if item.contains('@') {
                return Err(bad_allowlist(item, "write the host only, without user name"));
            }
            let (host, port, bracketed) = split_host_port(item).map_err(|why| bad_allowlist(item, why))?;
            let port = port.map(parse_port).transpose().map_err(|why| bad_allowlist(item, why))?;
            let pattern = if bracketed {
                let ip = host
                    .parse::<Ipv6Addr>()
                    .map_err(|_| bad_allowlist(item, "the text in brackets is not an IPv6 address"))?;
                Pattern::Ip(IpAddr::V6(ip))
            } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
                Pattern::Ip(IpAddr::V4(ip))
            } else if let Some(domain) = host.strip_prefix("*.") {
                let domain = dns_name(domain).map_err(|why| bad_allowlist(item, why))?;
                if !domain.contains('.') {
                    return Err(bad_allowlist(
                        item,
                        "a wildcard must name a domain of at least two labels (*.example.com, not *.com)",
                    ));
                }
                Pattern::Under(domain)
            } else if host.contains('*') {
                return Err(bad_allowlist(item, "'*' is allowed only as a whole first label: *.example.com"));
            } else {
                Pattern::Name(dns_name(host).map_err(|why| bad_allowlist(item, why))?)
            };
            entries.push(Entry { pattern, port });
        }
        Ok(Allowlist { entries })
    }

    /// Whether the list allows nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How (if at all) the list lets `host:port` through; an explicit entry wins over a
    /// wildcard.
    fn permit(&self, host: &Host, port: u16) -> Option<Permit> {
        let mut best = None;
        for e in &self.entries {
            let port_ok = match e.port {
                Some(p) => p == port,
                None => port == 80 || port == 443,
            };
            if !port_ok {
                continue;
            }
            match (&e.pattern, host) {
                (Pattern::Name(n), Host::Name(h)) if n == h => return Some(Permit::Explicit),
                (Pattern::Ip(a), Host::Ip(b)) if same_ip(*a, *b) => return Some(Permit::Explicit),
                (Pattern::Under(d), Host::Name(h))
                    if h.len() > d.len() + 1
                        && h.ends_with(d.as_str())
                        && h.as_bytes()[h.len() - d.len() - 1] == b'.' =>
                {
                    best = Some(Permit::Wildcard)
                }
                _ => {}
            }
        }
        best
    }
}

/// Equal addresses, an IPv4 address equal to its IPv4-mapped IPv6 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

// ---------------------------------------------------------------------------------------
// URLs

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A checked absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    host: Host,
    port: u16,
    /// Path and query, percent-encoded where needed, starting with '/'.
    target: String,
    /// The URL as written (for messages).
    text: String,
}

impl Url {
    fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

fn bad_url(url: &str, why: &str) -> Error {
    fetch_error(Kind::InvalidArgument, FetchProblem::BadUrl, format!("invalid image URL \"{}\": {why}", shown(url)))
        .with_hint("give an absolute http:// or https:// URL")
}

/// Percent-encodes spaces and non-ASCII bytes of a path and query (as browsers do);
/// refuses other control characters.
fn encode_target(text: &str) -> std::result::Result<String, &'static str> {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        match b {
            b' ' => out.push_str("%20"),
            0..=0x1f | 0x7f => return Err("it contains control characters"),
            0x80.. => out.push_str(&format!("%{b:02X}")),
            _ => out.push(b as char),
        }
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    Ok(out)
}

fn parse_url(text: &str) -> Result<Url> {
    let url = text.trim();
    if url.len() > MAX_URL_BYTES {
        return Err(bad_url(url, &format!("it is longer than {MAX_URL_BYTES} bytes")));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad_url(url, "it has no scheme (http:// or https://)"))?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(bad_url(url, "only http:// and https:// URLs can be fetched")),
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.starts_with('\\') {
        return Err(bad_url(url, "a backslash follows the host"));
    }
    let tail = tail.split('#').next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad_url(url, "it carries credentials (user@host), which pg_vision does not send"));
    }
    if authority.is_empty() {
        return Err(bad_url(url, "it has no host"));
    }
    let (host, port, bracketed) = split_host_port(authority).map_err(|why| bad_url(url, why))?;
    let port = match port {
        Some(p) => parse_port(p).map_err(|why| bad_url(url, why))?,
        None if https => 443,
        None => 80,
    };
    let host = if bracketed {
        Host::Ip(IpAddr::V6(host.parse().map_err(|_| bad_url(url, "the text in brackets is not an IPv6 address"))?))
    } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
        Host::Ip(IpAddr::V4(ip))
    } else {
        Host::Name(dns_name(host).map_err(|why| bad_url(url, why))?)
    };
    let target = encode_target(tail).map_err(|why| bad_url(url, why))?;
    Ok(Url { https, host, port, target, text: url.to_string() })
}

/// Removes `.` and `..` segments of a path (RFC 3986, 5.2.4).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// The absolute URL a `Location` value points to, relative to `base`.
fn join(base: &Url, location: &str) -> Result<Url> {
    let loc = location.trim();
    let has_scheme = loc
        .find(':')
        .is_some_and(|i| i > 0 && loc[..i].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
        && loc.as_bytes()[0].is_ascii_alphabetic();
    let absolute = if has_scheme {
        loc.to_string()
    } else if loc.starts_with("//") {
        format!("{}:{loc}", base.scheme())
    } else {
        let origin = format!("{}://{}", base.scheme(), base.authority());
        let (base_path, base_query) = base.target.split_once('?').unwrap_or((&base.target, ""));
        let loc = loc.split('#').next().unwrap_or("");
        if loc.is_empty() {
            if base_query.is_empty() {
                format!("{origin}{base_path}")
            } else {
                format!("{origin}{base_path}?{base_query}")
            }
        } else if loc.starts_with('?') {
            format!("{origin}{base_path}{loc}")
        } else {
            let (path, query) = match loc.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (loc, None),
            };
            let merged = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("{}{path}", &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)])
            };
            let path = remove_dot_segments(&merged);
            match query {
                Some(q) => format!("{origin}{path}?{q}"),
                None => format!("{origin}{path}"),
            }
        }
    };
    parse_url(&absolute)
}

// ---------------------------------------------------------------------------------------
// Policy

/// Resolves a host name to its addresses (the system resolver, or a test's).
pub type Resolver = fn(&str) -> io::Result<Vec<IpAddr>>;

/// The system resolver (`getaddrinfo`).
pub fn system_resolver(host: &str) -> io::Result<Vec<IpAddr>> {
    Ok((host, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// What a fetch may do.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it may go.
    pub allowlist: Allowlist,
    /// The most bytes of the image (the response body).
    pub max_bytes: usize,
    /// The deadline for the whole fetch, redirects included, from its start.
    pub timeout: Duration,
    /// Redirects followed at most (0: none).
    pub max_redirects: u32,
    /// How host names are resolved: `system_resolver` unless a test says otherwise.
    pub resolver: Resolver,
}

impl Policy {
    /// `allowlist` with 64 MB, 30 s, 5 redirects and the system resolver.
    pub fn new(allowlist: Allowlist) -> Policy {
        Policy {
            allowlist,
            max_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            max_redirects: 5,
            resolver: system_resolver,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks before the network

/// Checks that `url` is a fetchable http(s) URL whose host and port the allowlist lets
/// through, without touching the network (its addresses are checked only when fetched).
pub fn check_url(url: &str, allowlist: &Allowlist) -> Result<()> {
    let url = parse_url(url)?;
    permit(&url, allowlist, None).map(|_| ())
}

fn permit(url: &Url, allowlist: &Allowlist, redirected_from: Option<&str>) -> Result<Permit> {
    allowlist.permit(&url.host, url.port).ok_or_else(|| {
        let via = redirected_from.map(|from| format!(" (redirected from \"{}\")", shown(from))).unwrap_or_default();
        let hint = if allowlist.is_empty() {
            "the URL allowlist is empty, so no URL can be fetched: add the image hosts to it".to_string()
        } else {
            format!(
                "add {} to the URL allowlist{}, or store the image's bytes instead of its URL",
                url.authority(),
                if url.port == 80 || url.port == 443 {
                    ""
                } else {
                    " with its port (an entry without a port allows 80 and 443)"
                }
            )
        };
        fetch_error(
            Kind::InvalidArgument,
            FetchProblem::NotAllowed,
            format!("host {}:{} of \"{}\"{via} is not on the URL allowlist", url.host, url.port, shown(&url.text)),
        )
        .with_hint(hint)
    })
}

/// Checks every address of a host before any is used: all must be allowed.
fn check_addresses(url: &Url, addresses: &[IpAddr], how: Permit) -> Result<()> {
    for &ip in addresses {
        let refused = match address_class(ip) {
            AddressClass::Public => None,
            AddressClass::Restricted(_) if how == Permit::Explicit => None,
            AddressClass::Restricted(what) => Some((what, true)),
            AddressClass::Never(what) => Some((what, false)),
        };
        if let Some((what, fixable)) = refused {
            let hint = if fixable {
                format!(
                    "a wildcard allowlist entry reaches public addresses only; if {} is meant to be reached, add \
                     an entry naming it (with its port if not 80 or 443)",
                    url.host
                )
            } else {
                "no allowlist entry can allow this address".to_string()
            };
            return Err(fetch_error(
                Kind::InvalidArgument,
                FetchProblem::AddressRefused,
                format!(
                    "host {} of \"{}\" has the {what} address {ip}, which is not fetched",
                    url.host,
                    shown(&url.text)
                ),
            )
            .with_hint(hint));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Connecting

fn timeout_error(url: &Url, policy: &Policy, during: &str) -> Error {
    fetch_error(
        Kind::Fetch,
        FetchProblem::Timeout,
        format!("fetching \"{}\" took longer than {} ({during})", shown(&url.text), seconds(policy.timeout)),
    )
    .with_hint("the server is slow or unreachable; try again later, or allow a longer fetch timeout")
}

/// Resolves, checks and connects on a helper thread (name resolution cannot be given a
/// deadline otherwise), while this thread polls `stop` and the deadline. A helper left
/// behind ends by itself: its connects are bounded by the deadline, its lookup by the
/// resolver's own timeouts.
fn connect(url: &Url, how: Permit, policy: &Policy, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<TcpStream> {
    let (tx, rx) = mpsc::channel();
    let (job_url, resolver) = (url.clone(), policy.resolver);
    let spawned = crate::runtime::with_signals_blocked(|| {
        std::thread::Builder::new().name("pg_vision fetch".into()).spawn(move || {
            let _ = tx.send(resolve_and_connect(&job_url, how, resolver, deadline));
        })
    });
    spawned.map_err(|e| {
        fetch_error(Kind::Fetch, FetchProblem::Io, format!("cannot start a thread to connect to {}: {e}", url.host))
    })?;
    loop {
        check_stop(stop)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout_error(url, policy, "resolving and connecting"));
        }
        match rx.recv_timeout(left.min(POLL)) {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(Some(e))) => return Err(e),
            Ok(Err(None)) => return Err(timeout_error(url, policy, "connecting")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(fetch_error(
                    Kind::Fetch,
                    FetchProblem::Io,
                    format!("the thread connecting to {} ended without an answer", url.host),
                ))
            }
        }
    }
}

/// `Err(None)`: the deadline passed.
fn resolve_and_connect(
    url: &Url,
    how: Permit,
    resolver: Resolver,
    deadline: Instant,
) -> std::result::Result<TcpStream, Option<Error>> {
    let addresses = match &url.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => {
            let mut found = resolver(name).map_err(|e| {
                Some(fetch_error(
                    Kind::Fetch,
                    FetchProblem::Resolve,
                    format!("cannot resolve host {name} of \"{}\": {e}", shown(&url.text)),
                ))
            })?;
            let mut seen = Vec::new();
            found.retain(|ip| {
                !seen.contains(ip) && {
                    seen.push(*ip);
                    true
                }
            });
            if found.is_empty() {
                return Err(Some(fetch_error(
                    Kind::Fetch,
                    FetchProblem::Resolve,
                    format!("host {name} of \"{}\" has no addresses", shown(&url.text)),
                )));
            }
            found
        }
    };
    check_addresses(url, &addresses, how).map_err(Some)?;
    let mut last = None;
    for ip in addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        match TcpStream::connect_timeout(&SocketAddr::new(ip, url.port), left) {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => return Err(None),
            Err(e) => last = Some((ip, e)),
        }
    }
    let (ip, e) = last.expect("at least one address was tried");
    Err(Some(
        fetch_error(
            Kind::Fetch,
            FetchProblem::Connect,
            format!("cannot connect to {} ({ip}) port {} for \"{}\": {e}", url.host, url.port, shown(&url.text)),
        )
        .with_hint("the server is down or refuses connections; try again later"),
    ))
}

// ---------------------------------------------------------------------------------------
// I/O under the deadline

/// An I/O error meaning the deadline passed.
#[derive(Debug)]
struct DeadlinePassed;
impl fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline passed")
    }
}
impl std::error::Error for DeadlinePassed {}

/// An I/O error meaning `stop` asked to stop.
#[derive(Debug)]
struct Stopped;
impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stopped on request")
    }
}
impl std::error::Error for Stopped {}

/// A socket whose every wait ends at the deadline and is cut into polls of `stop`.
struct Timed<'a> {
    socket: TcpStream,
    deadline: Instant,
    stop: &'a dyn Fn() -> bool,
}

impl Timed<'_> {
    /// The next wait, or the error that ends the fetch.
    fn slice(&self) -> io::Result<Duration> {
        if (self.stop)() {
            return Err(io::Error::other(Stopped));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, DeadlinePassed));
        }
        Ok(left.min(POLL))
    }
}

fn waited(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.socket.set_read_timeout(Some(self.slice()?))?;
            match self.socket.read(buf) {
                Err(e) if waited(&e) => continue,
                r => return r,
            }
        }
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.socket.set_write_timeout(Some(self.slice()?))?;
            match self.socket.write(buf) {
                Err(e) if waited(&e) => continue,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

enum Stream<'a> {
    Plain(Timed<'a>),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Timed<'a>>>),
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|e| fetch_error(Kind::Fetch, FetchProblem::Tls, format!("cannot set up TLS: {e}")))
}

/// An I/O failure as a fetch error: a stop request, the deadline, TLS, or the network.
fn io_error(e: io::Error, url: &Url, policy: &Policy, during: &str) -> Error {
    if let Some(inner) = e.get_ref() {
        if inner.is::<Stopped>() {
            return Error::interrupted();
        }
        if inner.is::<DeadlinePassed>() {
            return timeout_error(url, policy, during);
        }
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return fetch_error(
                Kind::Fetch,
                FetchProblem::Tls,
                format!("TLS with {} failed for \"{}\": {tls}", url.host, shown(&url.text)),
            )
            .with_hint(
                "the server's certificate does not verify against the public root certificates, or its TLS is broken",
            );
        }
    }
    fetch_error(Kind::Fetch, FetchProblem::Io, format!("{during} \"{}\" failed: {e}", shown(&url.text)))
}

// ---------------------------------------------------------------------------------------
// HTTP

struct Head {
    status: u16,
    reason: String,
    content_length: Option<u64>,
    chunked: bool,
    location: Option<String>,
}

fn protocol_error(url: &Url, why: impl fmt::Display) -> Error {
    fetch_error(
        Kind::Fetch,
        FetchProblem::Protocol,
        format!("the response from \"{}\" is not HTTP/1.x as pg_vision reads it: {why}", shown(&url.text)),
    )
}

/// One line of at most `*budget` bytes (taken from the budget), without its line end.
fn read_line(r: &mut impl BufRead, budget: &mut u64, url: &Url, policy: &Policy, what: &str) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    let n =
        Read::take(&mut *r, *budget).read_until(b'\n', &mut line).map_err(|e| io_error(e, url, policy, "reading"))?;
    *budget -= n as u64;
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            protocol_error(url, format!("{what} is too long"))
        } else {
            fetch_error(
                Kind::Fetch,
                FetchProblem::Io,
                format!("the server closed the connection in the {what} of \"{}\"", shown(&url.text)),
            )
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

fn read_head(r: &mut impl BufRead, url: &Url, policy: &Policy) -> Result<Head> {
    let mut budget = MAX_HEAD_BYTES;
    loop {
        let line = read_line(r, &mut budget, url, policy, "response head")?;
        let line = String::from_utf8_lossy(&line).into_owned();
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let code = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(protocol_error(url, format!("status line \"{}\"", shown(&line))));
        }
        let status: u16 = code.parse().expect("three digits");
        let reason = parts.next().unwrap_or("").trim().to_string();
        let mut head = Head { status, reason, content_length: None, chunked: false, location: None };
        let mut encodings = Vec::new();
        loop {
            let line = read_line(r, &mut budget, url, policy, "response head")?;
            if line.is_empty() {
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                return Err(protocol_error(url, "a folded header line"));
            }
            let line = String::from_utf8_lossy(&line);
            let (name, value) = line.split_once(':').ok_or_else(|| protocol_error(url, "a header line without ':'"))?;
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n = (!value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| value.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| protocol_error(url, format!("Content-Length \"{}\"", shown(value))))?;
                    if head.content_length.is_some_and(|m| m != n) {
                        return Err(protocol_error(url, "two different Content-Length headers"));
                    }
                    head.content_length = Some(n);
                }
                "transfer-encoding" => {
                    encodings.extend(value.split(',').map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty()))
                }
                "content-encoding" if !value.eq_ignore_ascii_case("identity") => {
                    return Err(protocol_error(
                        url,
                        format!(
                            "Content-Encoding \"{}\" (pg_vision asks for and reads uncompressed bodies)",
                            shown(value)
                        ),
                    ));
                }
                "location" => head.location = Some(value.to_string()),
                _ => {}
            }
        }
        // 1xx answers (103 Early Hints, a stray 100 Continue) come before the real one.
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(protocol_error(url, "101 Switching Protocols"));
            }
            continue;
        }
        match encodings.as_slice() {
            [] => {}
            [only] if only == "chunked" => {
                head.chunked = true;
                head.content_length = None;
            }
            _ => {
                return Err(protocol_error(
                    url,
                    format!("Transfer-Encoding \"{}\" (pg_vision reads chunked only)", encodings.join(", ")),
                ))
            }
        }
        return Ok(head);
    }
}

fn too_large(url: &Url, policy: &Policy, value: u64, announced: bool) -> Error {
    let what = if announced {
        format!("announces {value} bytes")
    } else {
        format!("sent more than {} bytes without announcing its size", policy.max_bytes)
    };
    Error::new(
        Kind::ImageTooLarge,
        format!("the image at \"{}\" {what}, over the limit of {} bytes", shown(&url.text), policy.max_bytes),
    )
    .with_hint("store a smaller image at the URL, or raise the image size limit")
    .with_fact(Fact::OverLimit { limit: Limit::ImageBytes, value, max: policy.max_bytes as u64 })
}

/// Reads exactly `n` more bytes into `body` (the caller checked the limit). The buffer
/// grows with what arrives (doubling, never past the `n` bytes), not by `n` at once: a
/// server that announces the limit and sends nothing costs no memory.
fn read_exact_into(r: &mut impl Read, body: &mut Vec<u8>, n: usize, url: &Url, policy: &Policy) -> Result<()> {
    let start = body.len();
    let end = start + n;
    let mut filled = start;
    while filled < end {
        if filled == body.len() {
            let grow_to = (body.len() * 2).max(filled + READ_CHUNK).min(end);
            body.try_reserve_exact(grow_to - body.len()).map_err(|_| {
                Error::new(Kind::OutOfMemory, format!("cannot allocate {grow_to} bytes for \"{}\"", shown(&url.text)))
            })?;
            body.resize(grow_to, 0);
        }
        match r.read(&mut body[filled..]) {
            Ok(0) => {
                body.truncate(filled);
                return Err(fetch_error(
                    Kind::Fetch,
                    FetchProblem::Io,
                    format!(
                        "the server closed the connection {} bytes into a body part of {n} bytes from \"{}\"",
                        filled - start,
                        shown(&url.text)
                    ),
                ));
            }
            Ok(k) => filled += k,
            Err(e) => {
                body.truncate(filled);
                return Err(io_error(e, url, policy, "reading"));
            }
        }
    }
    Ok(())
}

fn read_body(r: &mut impl BufRead, head: &Head, url: &Url, policy: &Policy) -> Result<Vec<u8>> {
    let max = policy.max_bytes;
    let mut body = Vec::new();
    if let Some(n) = head.content_length {
        if n > max as u64 {
            return Err(too_large(url, policy, n, true));
        }
        read_exact_into(r, &mut body, n as usize, url, policy)?;
    } else if head.chunked {
        loop {
            let mut budget = MAX_CHUNK_LINE;
            let line = read_line(r, &mut budget, url, policy, "chunk size line")?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or("").trim();
            let size = (!size.is_empty() && size.len() <= 16 && size.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(size, 16).ok())
                .flatten()
                .ok_or_else(|| protocol_error(url, format!("chunk size \"{}\"", shown(size))))?;
            if size == 0 {
                break; // trailers, if any, are left unread: the connection closes.
            }
            if size > (max - body.len()) as u64 {
                return Err(too_large(url, policy, body.len() as u64 + size, false));
            }
            read_exact_into(r, &mut body, size as usize, url, policy)?;
            let mut budget = 2;
            if !read_line(r, &mut budget, url, policy, "chunk end")?.is_empty() {
                return Err(protocol_error(url, "a chunk longer than its size"));
            }
        }
    } else {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let k = match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => return Err(io_error(e, url, policy, "reading")),
            };
            if k > max - body.len() {
                return Err(too_large(url, policy, (body.len() + k) as u64, false));
            }
            if body.capacity() - body.len() < k {
                // Grow by doubling, but never past the limit.
                let want = (body.capacity() * 2).max(body.len() + k).max(READ_CHUNK).min(max);
                body.try_reserve_exact(want - body.len()).map_err(|_| {
                    Error::new(Kind::OutOfMemory, format!("cannot allocate {want} bytes for \"{}\"", shown(&url.text)))
                })?;
            }
            body.extend_from_slice(&chunk[..k]);
        }
    }
    Ok(body)
}

/// One request: returns the head and the reader positioned at the body.
fn request<'a>(
    url: &Url,
    how: Permit,
    policy: &Policy,
    deadline: Instant,
    stop: &'a dyn Fn() -> bool,
) -> Result<(Head, BufReader<Stream<'a>>)> {
    let socket = connect(url, how, policy, deadline, stop)?;
    let timed = Timed { socket, deadline, stop };
    let mut stream = if url.https {
        let name = match &url.host {
            Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(|e| bad_url(&url.text, &format!("the host is not a valid TLS server name: {e}")))?,
            Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
        };
        let conn = rustls::ClientConnection::new(tls_config()?, name).map_err(|e| {
            fetch_error(Kind::Fetch, FetchProblem::Tls, format!("cannot start TLS with {}: {e}", url.host))
        })?;
        Stream::Tls(Box::new(rustls::StreamOwned::new(conn, timed)))
    } else {
        Stream::Plain(timed)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pg_vision/{}\r\nAccept: image/*, */*;q=0.5\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
        url.target,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(request.as_bytes()).map_err(|e| io_error(e, url, policy, "sending the request for"))?;
    stream.flush().map_err(|e| io_error(e, url, policy, "sending the request for"))?;
    let mut reader = BufReader::with_capacity(READ_CHUNK, stream);
    let head = read_head(&mut reader, url, policy)?;
    Ok((head, reader))
}

/// Fetches the image at `url` under `policy`: its body's bytes, after redirects. Polls
/// `stop` at least every 50 ms while waiting; returns `Error::interrupted()` when it asks.
/// Errors: `InvalidArgument` for a malformed or refused URL or address, `ImageTooLarge`
/// over `max_bytes`, `Fetch` for everything on the way (each with `Fact::Fetch`, which
/// `retryable` reads), `Interrupted`.
pub fn fetch(url: &str, policy: &Policy, stop: &dyn Fn() -> bool) -> Result<Vec<u8>> {
    let deadline = Instant::now() + policy.timeout;
    let first = parse_url(url)?;
    let mut current = first.clone();
    let mut redirects = 0u32;
    loop {
        check_stop(stop)?;
        let from = (redirects > 0).then_some(first.text.as_str());
        let how = permit(&current, &policy.allowlist, from)?;
        let (head, mut reader) = request(&current, how, policy, deadline, stop)?;
        match head.status {
            200..=299 => return read_body(&mut reader, &head, &current, policy),
            301 | 302 | 303 | 307 | 308 => {
                let Some(location) = &head.location else {
                    return Err(fetch_error(
                        Kind::Fetch,
                        FetchProblem::Redirect,
                        format!("\"{}\" answered {} without a Location header", shown(&current.text), head.status),
                    ));
                };
                if redirects >= policy.max_redirects {
                    return Err(fetch_error(
                        Kind::Fetch,
                        FetchProblem::Redirect,
                        format!(
                            "\"{}\" redirects more than {} times (last to \"{}\")",
                            shown(&first.text),
                            policy.max_redirects,
                            shown(location)
                        ),
                    )
                    .with_hint("use the image's final URL, or allow more redirects"));
                }
                let next = join(&current, location)?;
                if current.https && !next.https {
                    return Err(fetch_error(
                        Kind::Fetch,
                        FetchProblem::Redirect,
                        format!(
                            "\"{}\" redirects from https to http (\"{}\")",
                            shown(&current.text),
                            shown(&next.text)
                        ),
                    ));
                }
                redirects += 1;
                current = next;
            }
            status => {
                let reason = if head.reason.is_empty() { String::new() } else { format!(" {}", shown(&head.reason)) };
                let via = if redirects > 0 {
                    format!(" (redirected from \"{}\")", shown(&first.text))
                } else {
                    String::new()
                };
                return Err(fetch_error(
                    Kind::Fetch,
                    FetchProblem::Status(status),
                    format!("HTTP {status}{reason} from \"{}\"{via}", shown(&current.text)),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(ip: &str) -> AddressClass {
        address_class(ip.parse().unwrap())
    }

    fn restricted(ip: &str) -> bool {
        matches!(class(ip), AddressClass::Restricted(_))
    }

    fn never(ip: &str) -> bool {
        matches!(class(ip), AddressClass::Never(_))
    }

    #[test]
    fn ipv4_ranges() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
        ] {
            assert!(restricted(ip), "{ip} should be restricted: {:?}", class(ip));
        }
        for ip in ["0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250"] {
            assert!(never(ip), "{ip} should never be fetched: {:?}", class(ip));
        }
        // The edges just outside the ranges are public.
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "11.0.0.0",
            "9.255.255.255",
            "126.255.255.255",
            "128.0.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(class(ip), AddressClass::Public, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms() {
        for ip in [
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "2001:db8::1",
            "2001::1",       // Teredo
            "2002:a00:1::1", // 6to4
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::127.0.0.1",     // IPv4-compatible
            "64:ff9b::a00:1",  // NAT64 of 10.0.0.1
            "64:ff9b::7f00:1", // NAT64 of 127.0.0.1
            "64:ff9b:1::1",
            "100::1",
            "4000::1",
            "3fff::1",
        ] {
            assert!(restricted(ip), "{ip} should be restricted: {:?}", class(ip));
        }
        for ip in ["::", "ff02::1", "ff0e::1", "::ffff:0.0.0.0", "::ffff:255.255.255.255", "::ffff:224.0.0.1"] {
            assert!(never(ip), "{ip} should never be fetched: {:?}", class(ip));
        }
        for ip in ["2606:4700:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8", "64:ff9b::808:808", "2001:200::1"] {
            assert_eq!(class(ip), AddressClass::Public, "{ip}");
        }
    }

    #[test]
    fn urls() {
        let u = parse_url("HTTPS://Images.Example.COM./a b/ü?x=1#frag").unwrap();
        assert!(u.https);
        assert_eq!(u.host, Host::Name("images.example.com".into()));
        assert_eq!(u.port, 443);
        assert_eq!(u.target, "/a%20b/%C3%BC?x=1");
        let u = parse_url("http://[::1]:8080").unwrap();
        assert_eq!((u.host.clone(), u.port, u.target.as_str()), (Host::Ip("::1".parse().unwrap()), 8080, "/"));
        assert_eq!(u.authority(), "[::1]:8080");
        let u = parse_url("http://10.0.0.1?q").unwrap();
        assert_eq!((u.host, u.target.as_str()), (Host::Ip("10.0.0.1".parse().unwrap()), "/?q"));
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "example.com/x",
            "http://",
            "http://user:pw@example.com/",
            "http://allowed.com@evil.com/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:/",
            "http://exa_mple.com/",
            "http://exämple.com/",
            "http://[::1/",
            "http://[127.0.0.1]/",
            "http://example.com\\@evil.com/",
            "http://example.com/a\nb",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.fact, Some(Fact::Fetch(FetchProblem::BadUrl)), "{bad}: {e}");
            assert_eq!(e.kind, Kind::InvalidArgument);
        }
    }

    #[test]
    fn joins() {
        let base = parse_url("http://a.example.com:8080/x/y/z.jpg?q=1").unwrap();
        let j = |l: &str| join(&base, l).unwrap().text;
        assert_eq!(j("https://b.example.com/p"), "https://b.example.com/p");
        assert_eq!(j("//c.example.com/p"), "http://c.example.com/p");
        assert_eq!(j("/p?r"), "http://a.example.com:8080/p?r");
        assert_eq!(j("w.jpg"), "http://a.example.com:8080/x/y/w.jpg");
        assert_eq!(j("../w.jpg"), "http://a.example.com:8080/x/w.jpg");
        assert_eq!(j("../../../../w.jpg"), "http://a.example.com:8080/w.jpg");
        assert_eq!(j("./"), "http://a.example.com:8080/x/y/");
        assert_eq!(j("?s"), "http://a.example.com:8080/x/y/z.jpg?s");
        assert_eq!(j(""), "http://a.example.com:8080/x/y/z.jpg?q=1");
        assert!(join(&base, "javascript:alert(1)").is_err());
    }

    #[test]
    fn allowlist_syntax() {
        let a = Allowlist::parse(
            " images.example.com , *.cdn.example.com,host.example.com:8080, 127.0.0.1,[::1]:8080, ::2",
        )
        .unwrap();
        assert_eq!(
            a.entries,
            vec![
                Entry { pattern: Pattern::Name("images.example.com".into()), port: None },
                Entry { pattern: Pattern::Under("cdn.example.com".into()), port: None },
                Entry { pattern: Pattern::Name("host.example.com".into()), port: Some(8080) },
                Entry { pattern: Pattern::Ip("127.0.0.1".parse().unwrap()), port: None },
                Entry { pattern: Pattern::Ip("::1".parse().unwrap()), port: Some(8080) },
                Entry { pattern: Pattern::Ip("::2".parse().unwrap()), port: None },
            ]
        );
        assert!(Allowlist::parse("").unwrap().is_empty());
        assert!(Allowlist::parse("  ").unwrap().is_empty());
        for bad in [
            "a.com,,b.com",
            "a.com,",
            "https://a.com",
            "a.com/images",
            "*",
            "*.com",
            "img*.example.com",
            "*.*.example.com",
            "a.com:0",
            "a.com:99999",
            "a.com:http",
            "[::1",
            "[a.com]:80",
            "user@a.com",
            "a..com",
            "-a.com",
            "2130706433",
        ] {
            let e = Allowlist::parse(bad).unwrap_err();
            assert_eq!(e.fact, Some(Fact::Fetch(FetchProblem::BadAllowlist)), "{bad}: {e}");
            assert!(e.message.contains("allowlist"), "{}", e.message);
        }
    }

    #[test]
    fn allowlist_matching() {
        let a = Allowlist::parse("images.example.com, *.cdn.example.com, host.example.com:8080, 10.0.0.5, [::1]:81")
            .unwrap();
        let p = |url: &str| {
            let u = parse_url(url).unwrap();
            a.permit(&u.host, u.port)
        };
        assert_eq!(p("http://images.example.com/x"), Some(Permit::Explicit));
        assert_eq!(p("https://IMAGES.example.com./x"), Some(Permit::Explicit));
        assert_eq!(p("http://images.example.com:8080/x"), None, "no port in the entry: 80 and 443 only");
        assert_eq!(p("http://a.cdn.example.com/x"), Some(Permit::Wildcard));
        assert_eq!(p("http://a.b.cdn.example.com/x"), Some(Permit::Wildcard));
        assert_eq!(p("http://cdn.example.com/x"), None, "the wildcard's domain itself is not under it");
        assert_eq!(p("http://evilcdn.example.com/x"), None);
        assert_eq!(p("http://a.cdn.example.com.evil.com/x"), None);
        assert_eq!(p("http://host.example.com:8080/x"), Some(Permit::Explicit));
        assert_eq!(p("http://host.example.com/x"), None);
        assert_eq!(p("http://10.0.0.5/x"), Some(Permit::Explicit));
        assert_eq!(p("http://[::ffff:10.0.0.5]/x"), Some(Permit::Explicit));
        assert_eq!(p("http://10.0.0.6/x"), None);
        assert_eq!(p("http://[::1]:81/x"), Some(Permit::Explicit));
        assert_eq!(p("http://[::1]:80/x"), None);
        assert_eq!(Allowlist::default().permit(&Host::Name("a.com".into()), 80), None);
    }

    #[test]
    fn addresses_against_permits() {
        let u = parse_url("http://img.cdn.example.com/").unwrap();
        let ips = |s: &[&str]| s.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpAddr>>();
        assert!(check_addresses(&u, &ips(&["93.184.216.34"]), Permit::Wildcard).is_ok());
        // One bad address among good ones refuses the host.
        let e = check_addresses(&u, &ips(&["93.184.216.34", "::ffff:169.254.169.254"]), Permit::Wildcard).unwrap_err();
        assert_eq!(e.fact, Some(Fact::Fetch(FetchProblem::AddressRefused)));
        assert!(e.message.contains("link-local"), "{}", e.message);
        assert!(check_addresses(&u, &ips(&["10.1.2.3"]), Permit::Explicit).is_ok());
        assert!(check_addresses(&u, &ips(&["0.0.0.0"]), Permit::Explicit).is_err());
        assert!(check_addresses(&u, &ips(&["ff02::1"]), Permit::Explicit).is_err());
    }

    #[test]
    fn retry_classes() {
        let status = |s| fetch_error(Kind::Fetch, FetchProblem::Status(s), "x");
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(retryable(&status(s)), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 451, 501, 505] {
            assert!(!retryable(&status(s)), "{s}");
        }
        assert!(retryable(&Error::interrupted()));
        assert!(!retryable(&Error::new(Kind::InvalidImage, "x")));
    }

    #[test]
    fn messages_cut_urls() {
        let long = format!("http://example.com/{}", "a".repeat(500));
        let e = parse_url(&format!("{long}\u{1}")).unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message);
        assert!(e.message.contains("..."));
    }
}
