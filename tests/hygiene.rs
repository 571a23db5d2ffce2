//! Connection hygiene of a real node: clients that are slow to send headers or a body, or on
//! whose connection nothing moves, are closed; connections past the caps are refused with a
//! clear answer, and accepted again once others close.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{
    raw_http_from, request_from, sample, scrape, wait_until, Http, TestCluster, TEST_CONFIG,
};

/// Longest the test waits for the node to act (the node's own timeouts are far shorter).
const DEADLINE: Duration = Duration::from_secs(15);

fn node(api: &str) -> TestCluster {
    TestCluster::start_with(1, &format!("{TEST_CONFIG}\n[api]\n{api}"))
}

fn connect(c: &TestCluster) -> TcpStream {
    let s = TcpStream::connect(c.node(0).api.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads until the node closes the connection; panics if it is still open at the deadline.
fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&out).into_owned()
            }
            Err(e) => panic!("the node kept the connection open ({e}); got {out:?}"),
        }
    }
}

#[test]
fn a_client_slow_to_send_its_headers_or_idle_between_requests_is_disconnected() {
    let c = node("header_read_timeout = \"500ms\"");
    let mut slow = connect(&c);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    read_until_closed(&mut slow);

    // A keep-alive connection is answered, then closed once it has waited idle as long.
    let mut idle = connect(&c);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"status":"ok"}"#), "{answer}");
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_a_408() {
    let c = node("body_read_timeout = \"500ms\"");
    let mut s = connect(&c);
    s.write_all(
        b"POST /v1/registrations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"app\":",
    )
    .unwrap();
    let answer = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"REQUEST_TIMEOUT""#), "{answer}");
    assert!(answer.contains("api.body_read_timeout"), "{answer}");
}

#[test]
fn a_body_the_node_will_not_read_closes_the_connection_instead_of_being_drained() {
    // Without this a client could trickle a body nobody reads, a byte at a time, forever.
    let c = node("idle_timeout = \"60s\"");
    for head in [
        "GET /v1/registrations HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n",
        "POST /v1/nowhere HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        "POST /v1/backends HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n",
    ] {
        let mut s = connect(&c);
        s.write_all(head.as_bytes()).unwrap();
        let answer = read_until_closed(&mut s);
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{head:?}: {answer}"
        );
    }
}

#[test]
fn a_connection_on_which_nothing_moves_is_closed_after_the_idle_timeout() {
    // An event stream with no events: nothing moves until the 15 s keep-alive, and the idle
    // timeout is shorter.
    let c = node("idle_timeout = \"1s\"");
    let mut s = connect(&c);
    s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("text/event-stream"), "{answer}");
}

#[test]
fn connections_past_the_caps_get_429_or_503_and_are_accepted_once_others_close() {
    let c =
        node("header_read_timeout = \"30s\"\nmax_connections = 6\nmax_connections_per_client = 3");
    let base = c.node(0).api.clone();
    let addr = base.trim_start_matches("http://").to_string();
    let open_from = |src: &str| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &format!("{src}:0")
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        let s: TcpStream = s.into();
        s
    };
    // Start from a node with no other connection open (the start-up health check's may
    // linger): the only one is the status request itself.
    wait_until(DEADLINE, "no other connection is open", || {
        let (_, status) = request_from("127.0.0.9", &base, "GET", "/v1/status", None, "");
        status["api"]["connections_open"] == 1
    });
    // Idle connections, as a slow-loris client would hold them. The node accepts connections
    // in the order they were made, so by the time it answers a later one these are counted.
    let mut held: Vec<TcpStream> = (0..3).map(|_| open_from("127.0.0.1")).collect();
    let answer = raw_http_from(
        "127.0.0.1",
        &base,
        "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(r#""code":"TOO_MANY_CONNECTIONS""#),
        "{answer}"
    );
    assert!(
        answer.contains("api.max_connections_per_client"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let (status, _) = request_from("127.0.0.1", &base, "GET", "/health", None, "");
    assert_eq!(status, 429);

    // Three more from another client fill the node.
    held.extend((0..3).map(|_| open_from("127.0.0.2")));
    let answer = raw_http_from(
        "127.0.0.3",
        &base,
        "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("api.max_connections"), "{answer}");

    // Closing one frees its place.
    drop(held.remove(0));
    wait_until(DEADLINE, "a new client is served again", || {
        request_from("127.0.0.3", &base, "GET", "/health", None, "").0 == 200
    });
    drop(held);
    let scrape = scrape(&Http::new(), &c.url(0, "/metrics"));
    assert!(sample(
        &scrape,
        "bender_api_connections_refused_total",
        &[("cap", "per_client")]
    )
    .is_some_and(|n| n >= 2.0));
    assert!(sample(
        &scrape,
        "bender_api_connections_refused_total",
        &[("cap", "total")]
    )
    .is_some_and(|n| n >= 1.0));
}

#[test]
fn requests_past_the_in_flight_cap_and_streams_past_theirs_get_429() {
    let c = TestCluster::start_with(
        1,
        &format!(
            "{TEST_CONFIG}\n[api]\nbody_read_timeout = \"30s\"\n[limits]\nmax_requests_in_flight = 2\nmax_event_streams = 1\n"
        ),
    );
    // Two requests whose bodies never finish hold both places.
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&c);
            s.write_all(b"POST /v1/registrations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").unwrap();
            s
        })
        .collect();
    wait_until(DEADLINE, "a third request is refused", || {
        let r = Http::new().get(&c.url(0, "/v1/members"));
        r.status == 429 && r.body["code"] == "TOO_MANY_REQUESTS"
    });
    slow.clear();
    wait_until(DEADLINE, "requests are served again", || {
        Http::new().get(&c.url(0, "/v1/members")).status == 200
    });
    // One event stream at most.
    let mut stream = connect(&c);
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let r = Http::new().get(&c.url(0, "/v1/events"));
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["code"], "TOO_MANY_EVENT_STREAMS");
}
