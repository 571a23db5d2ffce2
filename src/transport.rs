//! The gossip transport: chitchat's UDP transport behind a peer allow-list.
//!
//! chitchat authenticates nothing, so a node only accepts gossip from the networks the operator
//! lists (`gossip_allow`); datagrams from anywhere else are dropped before chitchat decodes them.
//! This complements, and does not replace, binding gossip to a private address and running it
//! over WireGuard or IPsec (see README).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::ChitchatEnvelope;
use ipnet::IpNet;
use tracing::warn;

/// UDP gossip that drops datagrams from senders outside `allow` (empty: allow all).
pub struct AllowListTransport {
    allow: Arc<Vec<IpNet>>,
    counters: Arc<TransportCounters>,
}

/// What the transport sent, received and dropped (for metrics; the gossip cost benchmarks
/// read them too).
#[derive(Debug, Default)]
pub struct TransportCounters {
    /// Datagrams dropped because their sender was not allowed.
    pub dropped: AtomicU64,
    /// Datagrams sent, and their bytes (chitchat's encoding, without UDP/IP headers).
    pub sent_datagrams: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Datagrams received from allowed senders, and their bytes.
    pub received_datagrams: AtomicU64,
    pub received_bytes: AtomicU64,
}

impl AllowListTransport {
    pub fn new(allow: Vec<IpNet>) -> Self {
        AllowListTransport {
            allow: Arc::new(allow),
            counters: Arc::default(),
        }
    }

    /// The counters of every socket this transport opens.
    pub fn counters(&self) -> Arc<TransportCounters> {
        self.counters.clone()
    }
}

/// Whether `addr` may gossip with us.
pub fn allowed(allow: &[IpNet], addr: &SocketAddr) -> bool {
    allow.is_empty() || allow.iter().any(|net| net.contains(&addr.ip()))
}

#[async_trait]
impl Transport for AllowListTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(AllowListSocket {
            inner,
            allow: self.allow.clone(),
            counters: self.counters.clone(),
        }))
    }
}

struct AllowListSocket {
    inner: Box<dyn Socket>,
    allow: Arc<Vec<IpNet>>,
    counters: Arc<TransportCounters>,
}

#[async_trait]
impl Socket for AllowListSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        let c = &self.counters;
        c.sent_datagrams.fetch_add(1, Ordering::Relaxed);
        c.sent_bytes
            .fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            if allowed(&self.allow, &outcome.from_addr) {
                let c = &self.counters;
                c.received_datagrams.fetch_add(1, Ordering::Relaxed);
                c.received_bytes
                    .fetch_add(outcome.num_bytes_received as u64, Ordering::Relaxed);
                return Ok(outcome);
            }
            // Log the first drop and then every 1,000th, so a flood cannot flood the log too.
            let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                warn!(from = %outcome.from_addr, dropped = n + 1, "dropped gossip from a sender outside gossip_allow");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_networks_and_empty_allows_all() {
        let a: SocketAddr = "10.1.2.3:1730".parse().unwrap();
        let b: SocketAddr = "192.168.0.1:1730".parse().unwrap();
        assert!(allowed(&[], &a));
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        assert!(allowed(&nets, &a));
        assert!(!allowed(&nets, &b));
    }
}
