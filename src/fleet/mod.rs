//! The fleet status: which load balancer runs what the registry says.
//!
//! Each node publishes one small record in its own gossip keyspace ([`KEY`]): the digest of
//! what its registry says now, and for each template the version of the config in place, the
//! digest of the view it was rendered from and the last error. Every node reads every record
//! and says, for each member, whether it is SYNCED (it runs what this node's registry says),
//! PENDING (behind, for less than `fleet_stale_after`), STALE (behind for longer, or
//! unreachable) or ERROR (its HAProxy refused a config, or cannot be asked).
//!
//! "Behind for how long" is measured on the observer's clock only ([`Tracker`]): the last
//! instant the member was seen running a view this node had, which is either now, or when the
//! view the member runs stopped being this node's. No wall clock of another host is trusted.
//!
//! Pure: the record, its decoding (a peer's record is input: bounded, checked, its text
//! sanitised), and the classification. `publish.rs` carries records in and out of gossip.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::registry::ViewDigest;

pub mod publish;
#[cfg(test)]
mod tests;

/// The gossip key of a node's apply record.
pub const KEY: &str = "n:apply";
/// A record longer than this is refused (a hostile or broken peer).
pub const MAX_RECORD_BYTES: usize = 24 * 1024;
pub const MAX_TEMPLATES: usize = 8;
pub const MAX_DEGRADED: usize = 8;
/// Error messages are cut to this many characters when published.
pub const MAX_ERROR_CHARS: usize = 500;
const MAX_NAME_CHARS: usize = 64;
/// How many of its own past view digests a node remembers, to tell how long ago a member's
/// view was current.
pub const HISTORY: usize = 256;

/// What a node publishes about its apply state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`ViewDigest::SCHEME`] of the digests below: digests of another scheme are not compared
    /// with this node's.
    #[serde(default)]
    pub scheme: u32,
    /// Whether the node has caught up with its peers (it renders only then).
    #[serde(default)]
    pub ready: bool,
    /// Digest of what the node's registry says now.
    #[serde(default)]
    pub view: String,
    /// When the record last changed, on the publisher's wall clock (ms since the epoch): for
    /// people; no decision uses another host's clock.
    #[serde(default)]
    pub at_ms: u64,
    #[serde(default)]
    pub templates: Vec<TemplateRecord>,
    /// Why the node is degraded (isolated, holding registrations); empty when it is not.
    #[serde(default)]
    pub degraded: Vec<String>,
}

/// One template's apply state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    #[serde(default)]
    pub name: String,
    /// Version (stamp) of the config this template last put in place.
    #[serde(default)]
    pub config: Option<String>,
    /// Digest of the view (what is served, held registrations included) that config was
    /// rendered from.
    #[serde(default)]
    pub from: Option<String>,
    /// Why the last render or apply failed, or HAProxy cannot be asked, until that is over.
    #[serde(default)]
    pub error: Option<String>,
    /// Entities this node leaves out of the config (they fail its validation).
    #[serde(default)]
    pub excluded: usize,
}

impl Record {
    /// The digest every template runs, if they agree (a node with no template has nothing to
    /// apply: it runs its view). `None` while templates disagree (mid-apply) or one has not
    /// applied anything yet.
    pub fn applied(&self) -> Option<&str> {
        let Some(first) = self.templates.first() else {
            return Some(&self.view);
        };
        let from = first.from.as_deref()?;
        self.templates
            .iter()
            .all(|t| t.from.as_deref() == Some(from))
            .then_some(from)
    }

    /// The first template error, named.
    pub fn error(&self) -> Option<String> {
        self.templates.iter().find_map(|t| {
            t.error
                .as_ref()
                .map(|e| format!("template {}: {e}", t.name))
        })
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a fleet record always serializes")
    }
}

/// Decodes a peer's record: at most [`MAX_RECORD_BYTES`], digests as hex, names as names;
/// messages are cut and stripped of control characters (they are shown to people). Fields a
/// newer version adds are ignored.
pub fn decode(value: &str) -> Result<Record, String> {
    if value.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_RECORD_BYTES} allowed",
            value.len()
        ));
    }
    let mut r: Record = serde_json::from_str(value).map_err(|e| e.to_string())?;
    if !is_digest(&r.view) {
        return Err("view is not a digest".into());
    }
    if r.templates.len() > MAX_TEMPLATES {
        return Err(format!("more than {MAX_TEMPLATES} templates"));
    }
    for t in &mut r.templates {
        if t.name.is_empty() || t.name.chars().count() > MAX_NAME_CHARS || !is_word(&t.name) {
            return Err("a template name is not a name".into());
        }
        let digests = [&t.config, &t.from];
        if digests
            .iter()
            .any(|d| d.as_deref().is_some_and(|d| !is_digest(d)))
        {
            return Err(format!(
                "template {}: config or from is not a digest",
                t.name
            ));
        }
        t.error = t.error.as_deref().map(sanitise);
    }
    r.degraded.truncate(MAX_DEGRADED);
    for d in &mut r.degraded {
        *d = sanitise(d);
    }
    Ok(r)
}

fn is_digest(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_word(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One line of at most [`MAX_ERROR_CHARS`] printable characters.
pub fn sanitise(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_CHARS)
        .collect();
    if s.chars().count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

/// A member's state as one node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Synced,
    Pending,
    Stale,
    Error,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label().to_ascii_uppercase())
    }
}

impl State {
    pub const ALL: [State; 4] = [State::Synced, State::Pending, State::Stale, State::Error];

    pub fn label(self) -> &'static str {
        match self {
            State::Synced => "synced",
            State::Pending => "pending",
            State::Stale => "stale",
            State::Error => "error",
        }
    }
}

/// A member as the fleet status takes it in.
#[derive(Debug, Clone)]
pub struct Member {
    pub node_id: String,
    pub live: bool,
    pub is_self: bool,
    /// Its record, decoded; `Err` says why it was refused; `None`: it publishes none.
    pub record: Option<Result<Record, String>>,
}

/// One member's line of the fleet status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node_id: String,
    pub state: State,
    pub live: bool,
    pub is_self: bool,
    /// Why it is not SYNCED.
    pub message: Option<String>,
    /// How long it has been behind this node's view (0 when SYNCED), ms.
    pub behind_ms: u64,
    /// Its record, as it published it.
    pub record: Option<Record>,
}

/// Decides a member's state. `behind` is how long it has not run a view this node had.
pub fn classify(m: &Member, in_sync: bool, behind: Duration, stale_after: Duration) -> Entry {
    let late = behind >= stale_after;
    let (state, message) = if !m.live {
        (
            State::Stale,
            Some("unreachable: no gossip from it (down, or cut off)".to_string()),
        )
    } else {
        match &m.record {
            None if late => (
                State::Stale,
                Some("publishes no apply state (a bender older than this one?)".into()),
            ),
            None => (State::Pending, Some("no apply state yet".into())),
            Some(Err(why)) => (
                State::Error,
                Some(format!("its apply record is refused: {why}")),
            ),
            Some(Ok(r)) => match r.error() {
                Some(e) => (State::Error, Some(e)),
                None if in_sync => (State::Synced, None),
                None => {
                    let why = if !r.ready {
                        "catching up with its peers"
                    } else if r.applied().is_none_or(|a| a != r.view) {
                        "applying"
                    } else {
                        "its registry differs from this node's"
                    };
                    let secs = behind.as_secs_f64();
                    let state = if late { State::Stale } else { State::Pending };
                    (state, Some(format!("{why} (behind for {secs:.1}s)")))
                }
            },
        }
    };
    Entry {
        node_id: m.node_id.clone(),
        state,
        live: m.live,
        is_self: m.is_self,
        message,
        behind_ms: if state == State::Synced {
            0
        } else {
            behind.as_millis() as u64
        },
        record: m.record.clone().and_then(Result::ok),
    }
}

/// The observer's memory: its own recent view digests (and when each stopped being current),
/// and for each member the last instant it was seen in sync. Bounded: [`HISTORY`] digests,
/// one instant per current member.
#[derive(Debug, Default)]
pub struct Tracker {
    current: Option<String>,
    /// Past digests, oldest first, each with the instant it stopped being current.
    past: VecDeque<(String, Instant)>,
    last_in_sync: HashMap<String, Instant>,
}

impl Tracker {
    /// This node's view digest is now `digest`.
    pub fn see_own(&mut self, digest: &str, now: Instant) {
        if self.current.as_deref() == Some(digest) {
            return;
        }
        if let Some(old) = self.current.replace(digest.to_string()) {
            self.past.retain(|(d, _)| *d != old && d != digest);
            if self.past.len() == HISTORY {
                self.past.pop_front();
            }
            self.past.push_back((old, now));
        }
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Every member's entry, sorted by node id.
    pub fn evaluate(
        &mut self,
        members: &[Member],
        now: Instant,
        stale_after: Duration,
    ) -> Vec<Entry> {
        self.last_in_sync
            .retain(|id, _| members.iter().any(|m| m.node_id == *id));
        let mut out: Vec<Entry> = members
            .iter()
            .map(|m| {
                let seen = *self.last_in_sync.entry(m.node_id.clone()).or_insert(now);
                let runs = match &m.record {
                    Some(Ok(r)) => r.applied().map(|a| (r, a)),
                    _ => None,
                };
                // When the member's view was last this node's: now, or when ours moved on.
                // Another digest scheme cannot be compared: it is in sync with its own view.
                let in_sync = runs.is_some_and(|(r, applied)| {
                    if r.scheme != ViewDigest::SCHEME {
                        applied == r.view
                    } else {
                        self.current.as_deref() == Some(applied)
                    }
                });
                let synced_at = if in_sync {
                    Some(now)
                } else {
                    runs.filter(|(r, _)| r.scheme == ViewDigest::SCHEME)
                        .and_then(|(_, applied)| {
                            self.past
                                .iter()
                                .find(|(d, _)| d == applied)
                                .map(|(_, t)| *t)
                        })
                };
                let seen = synced_at.map_or(seen, |t| t.max(seen));
                self.last_in_sync.insert(m.node_id.clone(), seen);
                classify(m, in_sync, now.saturating_duration_since(seen), stale_after)
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

/// How many members are in each state (every state listed, zeros included).
pub fn counts(entries: &[Entry]) -> BTreeMap<State, usize> {
    let mut c: BTreeMap<State, usize> = State::ALL.iter().map(|s| (*s, 0)).collect();
    for e in entries {
        *c.entry(e.state).or_default() += 1;
    }
    c
}
