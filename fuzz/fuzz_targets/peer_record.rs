//! Peer-record decoding: an arbitrary gossip key and value through what a node does with a
//! record a peer published (`bender::registry::decode_checked`), then, if it is accepted, the
//! join. It must never panic.
#![no_main]

use bender::registry::{decode_checked, digest, Registry};
use libfuzzer_sys::fuzz_target;

const PREFIXES: &[&str] = &["r:", "b:", "f:", ""];

fuzz_target!(|input: (u8, &str, &str)| {
    let (p, key_tail, value) = input;
    let key = format!("{}{key_tail}", PREFIXES[p as usize % PREFIXES.len()]);
    if let Ok(record) = decode_checked(&key, value) {
        let mut registry = Registry::default();
        registry.insert(record, digest(value.as_bytes()));
        let _ = registry.view(0);
        let _ = registry.view(u64::MAX);
    }
});
