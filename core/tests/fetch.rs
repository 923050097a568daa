//! `fetch::fetch` against HTTP servers on 127.0.0.1 that each test starts itself.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pg_vision_core::error::{never, FetchProblem};
use pg_vision_core::fetch::{self, Allowlist, Policy};
use pg_vision_core::{Error, Fact, Kind, Limit};

type Handler = dyn Fn(&mut TcpStream, &str) + Send + Sync;

/// A server on 127.0.0.1: counts connections, keeps each request head, and answers each
/// connection on a thread of its own with `handler(stream, request_head)`.
struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(handler: impl Fn(&mut TcpStream, &str) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (c, r) = (connections.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, r) = (handler.clone(), r.clone());
                thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    r.lock().unwrap().push(head.clone());
                    handler(&mut stream, &head);
                });
            }
        });
        Server { port, connections, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The allowlist entry naming this server.
    fn entry(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        // A connection the client made is accepted within moments.
        thread::sleep(Duration::from_millis(200));
        self.connections.load(Ordering::SeqCst)
    }
}

/// A server answering every request with `response`.
fn answering(response: Vec<u8>) -> Server {
    Server::start(move |s, _| {
        let _ = s.write_all(&response);
    })
}

fn ok_with_length(body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

fn policy(allowlist: &str) -> Policy {
    let mut p = Policy::new(Allowlist::parse(allowlist).unwrap());
    p.timeout = Duration::from_secs(10);
    p
}

fn problem(e: &Error) -> Option<FetchProblem> {
    match e.fact {
        Some(Fact::Fetch(p)) => Some(p),
        _ => None,
    }
}

/// Bytes that differ from position to position, so a reordering or a lost piece shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Test names under `example.test` resolve to 127.0.0.1; `slow.example.test` takes 5 s.
fn test_resolver(host: &str) -> std::io::Result<Vec<IpAddr>> {
    if host == "slow.example.test" {
        thread::sleep(Duration::from_secs(5));
    }
    if host.ends_with(".example.test") {
        Ok(vec!["127.0.0.1".parse().unwrap()])
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
    }
}

#[test]
fn content_length_body_and_request() {
    let body = pattern(300_000);
    let server = answering(ok_with_length(&body));
    let got = fetch::fetch(&server.url("/images/a%20b.jpg?sig=1"), &policy(&server.entry()), &never).unwrap();
    assert_eq!(got, body);
    let requests = server.requests.lock().unwrap();
    let head = &requests[0];
    assert!(head.starts_with("GET /images/a%20b.jpg?sig=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", server.port)), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert!(head.contains("\r\nAccept-Encoding: identity\r\n"), "{head}");
}

#[test]
fn chunked_body() {
    let body = pattern(100_000);
    let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut at = 0;
    for (i, size) in [1usize, 4095, 16384, 17, 50_000].iter().enumerate() {
        // Upper and lower case hex, and a chunk extension on one.
        let line = if i % 2 == 0 { format!("{size:x}") } else { format!("{size:X};name=value") };
        response.extend_from_slice(format!("{line}\r\n").as_bytes());
        response.extend_from_slice(&body[at..at + size]);
        response.extend_from_slice(b"\r\n");
        at += size;
    }
    response.extend_from_slice(format!("{:x}\r\n", body.len() - at).as_bytes());
    response.extend_from_slice(&body[at..]);
    response.extend_from_slice(b"\r\n0\r\nX-Trailer: 1\r\n\r\n");
    let server = answering(response);
    let got = fetch::fetch(&server.url("/c"), &policy(&server.entry()), &never).unwrap();
    assert_eq!(got.len(), body.len());
    assert_eq!(got, body);
}

#[test]
fn close_delimited_body_after_an_early_hint() {
    let body = pattern(70_000);
    let mut response = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.0 200 OK\r\n\r\n".to_vec();
    response.extend_from_slice(&body);
    let server = answering(response);
    assert_eq!(fetch::fetch(&server.url("/"), &policy(&server.entry()), &never).unwrap(), body);
}

#[test]
fn host_not_on_the_allowlist_is_refused_without_connecting() {
    let server = answering(ok_with_length(b"x"));
    // Another host; the same address on another port; nothing at all.
    for allowlist in ["images.example.com", "127.0.0.1:1", "127.0.0.1", ""] {
        let e = fetch::fetch(&server.url("/x"), &policy(allowlist), &never).unwrap_err();
        assert_eq!((e.kind, problem(&e)), (Kind::InvalidArgument, Some(FetchProblem::NotAllowed)), "{allowlist}: {e}");
        assert!(e.message.contains("127.0.0.1"), "{}", e.message);
        assert!(!fetch::retryable(&e));
    }
    assert_eq!(server.connections(), 0);
    // check_url says the same without a network.
    assert!(fetch::check_url(&server.url("/x"), &Allowlist::parse("images.example.com").unwrap()).is_err());
    assert!(fetch::check_url(&server.url("/x"), &Allowlist::parse(&server.entry()).unwrap()).is_ok());
}

#[test]
fn wildcard_never_reaches_loopback_but_a_named_host_does() {
    let server = answering(ok_with_length(b"named"));
    let url = format!("http://img.example.test:{}/x", server.port);
    let mut p = policy(&format!("*.example.test:{}", server.port));
    p.resolver = test_resolver;
    let e = fetch::fetch(&url, &p, &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::AddressRefused), "{e}");
    assert!(e.message.contains("loopback") && e.message.contains("127.0.0.1"), "{}", e.message);
    assert!(!fetch::retryable(&e));
    assert_eq!(server.connections(), 0);

    // The same host named in an entry is reached, through the same resolver.
    let mut p = policy(&format!("*.example.test:{0}, img.example.test:{0}", server.port));
    p.resolver = test_resolver;
    assert_eq!(fetch::fetch(&url, &p, &never).unwrap(), b"named");
    assert_eq!(server.connections(), 1);
}

#[test]
fn unresolvable_host() {
    let mut p = policy("nowhere.invalid:8080");
    p.resolver = test_resolver;
    let e = fetch::fetch("http://nowhere.invalid:8080/", &p, &never).unwrap_err();
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Resolve)), "{e}");
}

fn redirecting(status: u16, location: String) -> Server {
    answering(format!("HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n").into_bytes())
}

#[test]
fn redirect_to_a_host_not_on_the_allowlist_is_refused() {
    let target = answering(ok_with_length(b"secret"));
    let first = redirecting(302, target.url("/internal"));
    let e = fetch::fetch(&first.url("/a"), &policy(&first.entry()), &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::NotAllowed), "{e}");
    assert!(e.message.contains("redirected from"), "{}", e.message);
    assert_eq!(first.connections(), 1);
    assert_eq!(target.connections(), 0);

    // Nor to an allowed name that resolves to loopback through a wildcard.
    let first = redirecting(301, format!("http://a.example.test:{}/internal", target.port));
    let mut p = policy(&format!("{}, *.example.test:{}", first.entry(), target.port));
    p.resolver = test_resolver;
    let e = fetch::fetch(&first.url("/a"), &p, &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::AddressRefused), "{e}");
    assert_eq!(target.connections(), 0);

    // Nor to another scheme.
    let first = redirecting(302, "file:///etc/passwd".into());
    let e = fetch::fetch(&first.url("/a"), &policy(&first.entry()), &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::BadUrl), "{e}");
}

#[test]
fn redirects_to_allowed_hosts_are_followed() {
    let body = pattern(5000);
    let target = answering(ok_with_length(&body));
    for status in [301, 302, 303, 307, 308] {
        let first = redirecting(status, target.url("/final.jpg"));
        let p = policy(&format!("{}, {}", first.entry(), target.entry()));
        assert_eq!(fetch::fetch(&first.url("/a"), &p, &never).unwrap(), body, "{status}");
    }
    // A relative Location on the same server.
    let server = Server::start(|s, head| {
        let response = if head.starts_with("GET /dir/old.jpg ") {
            b"HTTP/1.1 302 Found\r\nLocation: ../new/img.jpg?v=2\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else if head.starts_with("GET /new/img.jpg?v=2 ") {
            ok_with_length(b"moved here")
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
        };
        let _ = s.write_all(&response);
    });
    assert_eq!(fetch::fetch(&server.url("/dir/old.jpg"), &policy(&server.entry()), &never).unwrap(), b"moved here");
}

#[test]
fn redirect_loop_stops_at_max_redirects() {
    let server = redirecting(302, "/again".into());
    let mut p = policy(&server.entry());
    p.max_redirects = 3;
    let e = fetch::fetch(&server.url("/start"), &p, &never).unwrap_err();
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Redirect)), "{e}");
    assert!(e.message.contains("more than 3"), "{}", e.message);
    assert!(!fetch::retryable(&e));
    assert_eq!(server.connections(), 4, "the first request and 3 redirects");

    p.max_redirects = 0;
    let before = server.connections();
    assert!(fetch::fetch(&server.url("/start"), &p, &never).is_err());
    assert_eq!(server.connections() - before, 1);
}

/// Headers, then one byte every 50 ms of a body that would take minutes.
fn dripping() -> Server {
    Server::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        for _ in 0..100_000 {
            if s.write_all(b"x").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    })
}

fn assert_times_out(server: &Server, timeout: Duration) {
    let mut p = policy(&server.entry());
    p.timeout = timeout;
    let start = Instant::now();
    let e = fetch::fetch(&server.url("/slow"), &p, &never).unwrap_err();
    let took = start.elapsed();
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Timeout)), "{e}");
    assert!(fetch::retryable(&e));
    assert!(took >= timeout, "gave up after {took:?}, before the {timeout:?} deadline");
    assert!(took < timeout + Duration::from_millis(300), "{took:?} for a {timeout:?} deadline");
}

#[test]
fn slow_body_hits_the_deadline() {
    assert_times_out(&dripping(), Duration::from_millis(700));
}

#[test]
fn slow_head_hits_the_deadline() {
    let server = Server::start(|s, _| {
        for b in b"HTTP/1.1 200 OK\r\nX-Slow: ".iter().chain([b'a'; 10_000].iter()) {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(30));
        }
    });
    assert_times_out(&server, Duration::from_millis(600));
}

#[test]
fn silent_server_hits_the_deadline() {
    let server = Server::start(|_, _| thread::sleep(Duration::from_secs(30)));
    assert_times_out(&server, Duration::from_millis(500));
}

#[test]
fn slow_name_resolution_hits_the_deadline() {
    let mut p = policy("slow.example.test:9");
    p.resolver = test_resolver;
    p.timeout = Duration::from_millis(400);
    let start = Instant::now();
    let e = fetch::fetch("http://slow.example.test:9/", &p, &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::Timeout), "{e}");
    assert!(start.elapsed() < Duration::from_millis(700), "{:?}", start.elapsed());
}

fn assert_too_large(e: &Error, max: usize) -> u64 {
    assert_eq!(e.kind, Kind::ImageTooLarge, "{e}");
    assert!(!fetch::retryable(e));
    match e.fact {
        Some(Fact::OverLimit { limit: Limit::ImageBytes, value, max: m }) => {
            assert_eq!(m, max as u64);
            assert!(value > max as u64);
            value
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_content_length_is_refused_before_the_body() {
    // The server announces 2000 bytes and then sends nothing for 30 s: only a client that
    // refuses at the header returns at once.
    let server = Server::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n");
        thread::sleep(Duration::from_secs(30));
    });
    let mut p = policy(&server.entry());
    p.max_bytes = 1000;
    let start = Instant::now();
    let e = fetch::fetch(&server.url("/big"), &p, &never).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(assert_too_large(&e, 1000), 2000);
    assert!(e.message.contains("2000") && e.message.contains("1000"), "{}", e.message);

    // Exactly the limit is fine.
    let body = pattern(1000);
    let server = answering(ok_with_length(&body));
    let mut p = policy(&server.entry());
    p.max_bytes = 1000;
    assert_eq!(fetch::fetch(&server.url("/"), &p, &never).unwrap(), body);
}

/// A server that streams `chunk`s for ever (until the client goes), counting what it sent.
fn endless(head: &'static [u8], chunk: Vec<u8>) -> (Server, Arc<AtomicUsize>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let server = Server::start(move |s, _| {
        let _ = s.write_all(head);
        while s.write_all(&chunk).is_ok() {
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    (server, sent)
}

#[test]
fn oversized_chunked_body_is_cut_off() {
    let mut chunk = b"400\r\n".to_vec();
    chunk.extend_from_slice(&[7u8; 0x400]);
    chunk.extend_from_slice(b"\r\n");
    let (server, _) = endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunk);
    let mut p = policy(&server.entry());
    p.max_bytes = 100_000;
    let e = fetch::fetch(&server.url("/"), &p, &never).unwrap_err();
    assert_too_large(&e, 100_000);

    // One chunk announced over the limit is refused before it is read.
    let server = Server::start(|s, _| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\nffffffff\r\n");
        thread::sleep(Duration::from_secs(30));
    });
    let mut p = policy(&server.entry());
    p.max_bytes = 100_000;
    let start = Instant::now();
    let e = fetch::fetch(&server.url("/"), &p, &never).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(assert_too_large(&e, 100_000), 16 + 0xffff_ffff);
}

#[test]
fn oversized_close_delimited_body_is_cut_off() {
    let (server, sent) = endless(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", vec![9u8; 8192]);
    let mut p = policy(&server.entry());
    p.max_bytes = 200_000;
    let e = fetch::fetch(&server.url("/"), &p, &never).unwrap_err();
    assert_too_large(&e, 200_000);
    // The client closed the connection: the server's writes fail and it stops sending.
    thread::sleep(Duration::from_millis(300));
    let sent_then = sent.load(Ordering::SeqCst);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(sent.load(Ordering::SeqCst), sent_then, "the server is still sending");
}

fn status_error(status: &str) -> Error {
    let server = answering(format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\nnope\n").into_bytes());
    fetch::fetch(&server.url("/p/img.jpg?token=abc"), &policy(&server.entry()), &never).unwrap_err()
}

#[test]
fn http_error_statuses() {
    let e = status_error("404 Not Found");
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Status(404))));
    assert!(e.message.contains("404 Not Found") && e.message.contains("/p/img.jpg"), "{}", e.message);
    assert!(!fetch::retryable(&e));

    for (status, retry) in [
        ("503 Service Unavailable", true),
        ("429 Too Many Requests", true),
        ("500 Oops", true),
        ("403 Forbidden", false),
    ] {
        let e = status_error(status);
        assert_eq!(fetch::retryable(&e), retry, "{status}: {e}");
    }
}

#[test]
fn long_urls_are_cut_in_messages() {
    let server = answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
    let url = server.url(&format!("/img.jpg?signature={}", "s".repeat(2000)));
    let e = fetch::fetch(&url, &policy(&server.entry()), &never).unwrap_err();
    assert!(e.message.len() < 300, "{}", e.message);
    assert!(!e.message.contains(&"s".repeat(300)));
}

#[test]
fn stop_interrupts_a_silent_server() {
    let server = Server::start(|_, _| thread::sleep(Duration::from_secs(30)));
    let start = Instant::now();
    let stop = move || start.elapsed() > Duration::from_millis(200);
    let e = fetch::fetch(&server.url("/"), &policy(&server.entry()), &stop).unwrap_err();
    assert_eq!(e.kind, Kind::Interrupted, "{e}");
    assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
}

#[test]
fn stop_interrupts_a_dripping_body_and_a_slow_lookup() {
    let server = dripping();
    let start = Instant::now();
    let stop = move || start.elapsed() > Duration::from_millis(300);
    let e = fetch::fetch(&server.url("/"), &policy(&server.entry()), &stop).unwrap_err();
    assert_eq!(e.kind, Kind::Interrupted, "{e}");
    assert!(start.elapsed() < Duration::from_millis(600), "{:?}", start.elapsed());

    let mut p = policy("slow.example.test:9");
    p.resolver = test_resolver;
    let start = Instant::now();
    let stop = move || start.elapsed() > Duration::from_millis(100);
    let e = fetch::fetch("http://slow.example.test:9/", &p, &stop).unwrap_err();
    assert_eq!(e.kind, Kind::Interrupted, "{e}");
    assert!(start.elapsed() < Duration::from_millis(400), "{:?}", start.elapsed());
}

#[test]
fn connection_refused_is_retryable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e =
        fetch::fetch(&format!("http://127.0.0.1:{port}/"), &policy(&format!("127.0.0.1:{port}")), &never).unwrap_err();
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Connect)), "{e}");
    assert!(fetch::retryable(&e));
}

#[test]
fn broken_responses() {
    let cases: [(&[u8], FetchProblem); 6] = [
        // Closed before the announced length.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", FetchProblem::Io),
        // Closed before the head ends.
        (b"HTTP/1.1 200 OK\r\nContent-Le", FetchProblem::Io),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", FetchProblem::Protocol),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", FetchProblem::Protocol),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", FetchProblem::Protocol),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx", FetchProblem::Protocol),
    ];
    for (response, expected) in cases {
        let server = answering(response.to_vec());
        let e = fetch::fetch(&server.url("/"), &policy(&server.entry()), &never).unwrap_err();
        assert_eq!(problem(&e), Some(expected), "{:?}: {e}", String::from_utf8_lossy(response));
    }
    // A head without end.
    let (server, _) = endless(b"HTTP/1.1 200 OK\r\n", b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_vec());
    let e = fetch::fetch(&server.url("/"), &policy(&server.entry()), &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::Protocol), "{e}");
}

#[test]
fn https_to_a_server_that_does_not_speak_tls_fails_cleanly() {
    // A plain HTTP server that answers as soon as a client connects (a TLS ClientHello
    // never ends in a blank line).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain");
            thread::sleep(Duration::from_secs(1));
        }
    });
    let start = Instant::now();
    let e =
        fetch::fetch(&format!("https://127.0.0.1:{port}/"), &policy(&format!("127.0.0.1:{port}")), &never).unwrap_err();
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Tls)), "{e}");
    assert!(!fetch::retryable(&e));
    assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());
}

#[test]
fn https_certificates_are_verified() {
    // A real TLS server (rustls) with a self-signed certificate for localhost and
    // 127.0.0.1 (tests/data/selfsigned_*.der, made with openssl): no public root signs it,
    // so the fetch must fail in the handshake, having sent the host name (SNI).
    let cert = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/selfsigned_cert.der")).unwrap();
    let key = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/selfsigned_key.der")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let seen = sni.clone();
    thread::spawn(move || {
        for mut sock in listener.incoming().flatten() {
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() && conn.complete_io(&mut sock).is_ok() {}
            seen.lock().unwrap().push(conn.server_name().map(str::to_string));
        }
    });
    let start = Instant::now();
    let url = format!("https://localhost:{port}/img.jpg");
    let e = fetch::fetch(&url, &policy(&format!("localhost:{port}")), &never).unwrap_err();
    assert_eq!((e.kind, problem(&e)), (Kind::Fetch, Some(FetchProblem::Tls)), "{e}");
    assert!(e.message.contains("UnknownIssuer"), "{}", e.message);
    assert!(start.elapsed() < Duration::from_secs(2));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(*sni.lock().unwrap(), vec![Some("localhost".to_string())]);

    // By address, too (no SNI for an IP address).
    let e =
        fetch::fetch(&format!("https://127.0.0.1:{port}/"), &policy(&format!("127.0.0.1:{port}")), &never).unwrap_err();
    assert_eq!(problem(&e), Some(FetchProblem::Tls), "{e}");
}
