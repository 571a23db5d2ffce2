//! bender: a distributed, expiring service registry that drives HAProxy.
//!
//! Data flows one way:
//!
//! ```text
//! HTTP API (api) ──write──▶ node ──set──▶ own gossip keyspace (chitchat) ──UDP──▶ peers
//!                                                                         │
//!   peers' keyspaces ──key-change wake-ups──▶ node: CRDT join (registry) ◀┘
//!        ──▶ view at `now` (registry::View) ──▶ events (events) ──▶ SSE
//!                                          └──▶ NodeView (cluster) ──▶ render ──▶ HAProxy
//! ```
//!
//! - [`model`]: entities and the validation of everything a client sends.
//! - [`hlc`]: the clock and the hybrid logical clock that orders writes.
//! - [`registry`]: the CRDT core and its gossip codec; pure, no I/O, time as a parameter.
//! - [`node`]: chitchat glue, the write path, the view task, garbage collection, snapshots.
//! - [`events`]: the diff between consecutive views.
//! - [`api`]: the HTTP API (bender 0.2.1 routes and `/v1`), its server (TLS, timeouts, caps).
//! - [`auth`]: tokens, client certificates, scopes, and the registration policy.
//! - [`render`]: Tera templates rendered and applied to HAProxy.
//! - [`config`], [`snapshot`], [`shutdown`], [`supervise`]: configuration, local persistence,
//!   the shutdown signal, supervision of tasks.
//!
//! See ARCHITECTURE.md for the invariants and why they hold.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod events;
#[doc(hidden)]
pub mod failpoint;
pub mod fleet;
pub mod guard;
pub mod hlc;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod node;
pub mod registry;
pub mod render;
pub mod shutdown;
pub mod sim;
pub mod snapshot;
pub mod supervise;
pub mod transport;

mod run;
pub use run::{run, run_with_reload, Reload, RunError};
