//! What the benchmarks share: free loopback ports and the release binary.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;

/// A port free on loopback for both TCP and UDP (an API and a gossip port can be the same).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The release build of bender (the benchmarks measure that, not a debug build).
#[allow(dead_code)]
pub fn binary() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/bender");
    assert!(
        p.exists(),
        "build the release binary first: cargo build --release"
    );
    p
}
