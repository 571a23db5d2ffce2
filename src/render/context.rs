//! The template context: a sorted, stable projection of the node's view.
//!
//! The context holds only what HAProxy should serve. Lease deadlines, renewal times and clock
//! offsets are left out on purpose: they change on every renewal, and a context that changed
//! with them would rewrite the config and reload HAProxy every few seconds for nothing.
//! Every list is sorted and every map is a `BTreeMap`, so the same view renders the same bytes.
//!
//! Nothing reaches a template unchecked, whoever wrote it: a peer may run another version or be
//! hostile. Every entity and registration is validated again here as this node's config says
//! (free-form lines against the allow-list unless this node enables config snippets); what
//! fails is left out of the context and reported ([`Excluded`]), and the rest renders.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::NodeView;
use crate::model::{self, Backend, Balance, Frontend, HealthCheck, Mode, Snippets};
use crate::registry::LiveRegistration;

use super::slots;

/// Everything a template sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderContext {
    pub node: NodeCtx,
    pub members: Vec<MemberCtx>,
    pub frontends: Vec<FrontendCtx>,
    pub backends: Vec<BackendCtx>,
    pub registrations: Vec<RegistrationCtx>,
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeCtx {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberCtx {
    pub node_id: String,
    pub gossip_addr: String,
    pub api_addr: Option<String>,
    pub live: bool,
    pub is_self: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendCtx {
    pub name: String,
    /// The backend the frontend names, whether or not it exists.
    pub backend: String,
    /// `backend` when it exists and has the frontend's mode; otherwise null, and the default
    /// template leaves `default_backend` out (HAProxy answers 503) rather than render a config
    /// that `haproxy -c` rejects and that would block every other change.
    pub default_backend: Option<String>,
    pub bind: String,
    pub mode: Mode,
    pub rules: Vec<RuleCtx>,
    pub extra: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCtx {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub backend: String,
    /// False when the rule cannot be rendered: its backend is missing or of another mode, or
    /// the frontend is in TCP mode (host and path need HTTP).
    pub usable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendCtx {
    pub name: String,
    pub app: String,
    pub version: String,
    pub balance: Balance,
    pub mode: Mode,
    pub health_check: Option<HealthCheck>,
    pub server_options: Option<String>,
    pub extra: Vec<String>,
    /// Live registrations of app@version, sorted by (host, port).
    pub servers: Vec<ServerCtx>,
    /// The backend's server slots (see `slots.rs`): every live server in the slot it keeps
    /// while it lives, a server that left draining in its slot, the spare ones empty. A
    /// template that renders these (and not `servers`) lets membership changes go through
    /// HAProxy's runtime API without a reload.
    pub slots: Vec<SlotCtx>,
}

/// One server slot, as a `server` line renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotCtx {
    /// `slot1`, `slot2`, ...: the server's name in HAProxy.
    pub name: String,
    /// `host:port` (IPv6 in brackets); `127.0.0.1:1` for an empty slot.
    pub address: String,
    pub host: String,
    pub port: u16,
    /// The server's weight (`meta.weight`, default 1).
    pub weight: u16,
    /// "ready" (a live server), "drain" (a server that left, finishing its requests) or
    /// "maint" (empty). Anything but ready renders as `disabled`.
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerCtx {
    /// Stable HAProxy server name `app-version-host-port` (characters outside
    /// `[A-Za-z0-9._-]` become `_`). Stable names let `server-state-file` carry health state
    /// across reloads, and since the name contains the address a saved state can never move a
    /// server to another address.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `host:port`, with IPv6 hosts in brackets, ready for a `server` line.
    pub address: String,
    /// `meta.weight` when it is a valid HAProxy weight (0..=256), else null. Parsed here so
    /// that one client's bad meta can never make the whole config fail `haproxy -c`.
    pub weight: Option<u16>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationCtx {
    pub id: String,
    pub app: String,
    pub version: String,
    pub host: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
}

/// Something this node would not render, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    /// "backend", "frontend" or "registration".
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

/// Replaces every character HAProxy does not accept in an identifier.
pub fn sanitize_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How a registration's host becomes the address of its `server` line.
pub enum Names<'a> {
    /// As written (`bender render`, docs, tests): HAProxy resolves names itself.
    Verbatim,
    /// Through bender's own resolver (the apply stage): a name without an address yet is
    /// left out, so that `haproxy -c` never waits on DNS.
    Resolved(&'a (dyn Fn(&str) -> Result<IpAddr, String> + Sync)),
}

fn server(reg: &LiveRegistration, resolved: Option<IpAddr>) -> ServerCtx {
    let k = &reg.key;
    let host = resolved
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| k.host.clone());
    let address = if host.contains(':') {
        format!("[{}]:{}", host, k.port)
    } else {
        format!("{}:{}", host, k.port)
    };
    ServerCtx {
        name: sanitize_name(&format!("{}-{}-{}-{}", k.app, k.version, k.host, k.port)),
        host: k.host.clone(),
        port: k.port,
        address,
        weight: reg
            .meta
            .get("weight")
            .and_then(|w| w.parse::<u16>().ok())
            .filter(|w| *w <= 256),
        meta: reg.meta.clone(),
    }
}

/// Live registrations grouped by (app, version), each group sorted by (host, port). Built once
/// per render: looking each backend's servers up in the whole view would be quadratic.
type ByApp<'a> = BTreeMap<(&'a str, &'a str), Vec<(&'a LiveRegistration, Option<IpAddr>)>>;

fn group_by_app<'a>(registrations: &[(&'a LiveRegistration, Option<IpAddr>)]) -> ByApp<'a> {
    let mut groups: ByApp<'a> = BTreeMap::new();
    // The view is keyed by (app, version, host, port): each group comes out sorted.
    for (r, ip) in registrations.iter().copied() {
        groups
            .entry((r.key.app.as_str(), r.key.version.as_str()))
            .or_default()
            .push((r, ip));
    }
    groups
}

fn backend(by_app: &ByApp<'_>, b: &Backend) -> BackendCtx {
    BackendCtx {
        name: b.name.clone(),
        app: b.app.clone(),
        version: b.version.clone(),
        balance: b.balance,
        mode: b.mode,
        health_check: b.health_check.clone(),
        server_options: b.server_options.clone(),
        extra: b.extra.clone(),
        servers: by_app
            .get(&(b.app.as_str(), b.version.as_str()))
            .map(|regs| regs.iter().map(|(r, ip)| server(r, *ip)).collect())
            .unwrap_or_default(),
        slots: Vec::new(),
    }
}

fn frontend(backends: &BTreeMap<&str, &Backend>, f: &Frontend) -> FrontendCtx {
    let compatible = |name: &str| backends.get(name).is_some_and(|b| b.mode == f.mode);
    FrontendCtx {
        name: f.name.clone(),
        backend: f.backend.clone(),
        default_backend: compatible(&f.backend).then(|| f.backend.clone()),
        bind: f.bind.clone(),
        mode: f.mode,
        rules: f
            .rules
            .iter()
            .map(|r| RuleCtx {
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                backend: r.backend.clone(),
                usable: f.mode == Mode::Http && compatible(&r.backend),
            })
            .collect(),
        extra: f.extra.clone(),
    }
}

/// What of a view may be rendered on this node: the entities and registrations that pass its
/// validation, and what was left out.
struct Screened<'a> {
    backends: BTreeMap<&'a str, &'a Backend>,
    frontends: Vec<&'a Frontend>,
    /// With the address its host name resolved to (None: an IP, or names verbatim).
    registrations: Vec<(&'a LiveRegistration, Option<IpAddr>)>,
    excluded: Vec<Excluded>,
}

/// Entities this node keeps out of its renders because HAProxy refused them, with why, as long
/// as their value is the one HAProxy refused (the digest of its JSON): a new value gets a new
/// chance.
pub type Quarantine = BTreeMap<super::sections::EntityRef, (u64, String)>;

/// The digest a quarantined entity's value is recorded under.
pub fn entity_digest<T: Serialize>(v: &T) -> u64 {
    crate::registry::digest(serde_json::to_string(v).unwrap_or_default().as_bytes())
}

fn screen<'a>(
    nv: &'a NodeView,
    snippets: Snippets,
    quarantine: &Quarantine,
    names: &Names<'_>,
) -> Screened<'a> {
    use super::sections::EntityRef;
    let quarantined = |e: EntityRef, digest: u64| {
        quarantine
            .get(&e)
            .filter(|(d, _)| *d == digest)
            .map(|(_, why)| format!("HAProxy refused it: {why}"))
    };
    let mut excluded = Vec::new();
    let mut exclude = |kind, name: &str, reason: String| {
        excluded.push(Excluded {
            kind,
            name: name.chars().take(64).collect(),
            reason,
        })
    };
    let mut backends = BTreeMap::new();
    for (name, b) in &nv.view.backends {
        let checked = if &b.name != name {
            Err(format!("its name {:?} differs from its key", b.name))
        } else if let Some(why) = quarantined(EntityRef::Backend(name.clone()), entity_digest(b)) {
            Err(why)
        } else {
            b.validate(snippets).map_err(|e| e.to_string())
        };
        match checked {
            Ok(()) => {
                backends.insert(name.as_str(), b);
            }
            Err(reason) => exclude("backend", name, reason),
        }
    }
    let mut frontends = Vec::new();
    for (name, f) in &nv.view.frontends {
        let checked = if &f.name != name {
            Err(format!("its name {:?} differs from its key", f.name))
        } else if let Some(why) = quarantined(EntityRef::Frontend(name.clone()), entity_digest(f)) {
            Err(why)
        } else {
            f.validate(snippets).map_err(|e| e.to_string())
        };
        match checked {
            Ok(()) => frontends.push(f),
            Err(reason) => exclude("frontend", name, reason),
        }
    }
    let mut registrations = Vec::new();
    for (key, r) in nv.served() {
        let checked = if &r.key != key {
            Err("its key differs from the registration it holds".to_string())
        } else {
            model::RegKey::new(&key.app, &key.version, &key.host, key.port)
                .and_then(|_| model::validate_meta(&r.meta))
                .map_err(|e| e.to_string())
        };
        let resolved = match (checked, names) {
            (Err(reason), _) => Err(reason),
            (Ok(()), _) if key.host.parse::<IpAddr>().is_ok() => Ok(None),
            (Ok(()), Names::Verbatim) => Ok(None),
            (Ok(()), Names::Resolved(resolve)) => resolve(&key.host).map(Some).map_err(|why| {
                format!(
                    "host {} has no address (left out until it resolves): {why}",
                    key.host
                )
            }),
        };
        match resolved {
            Ok(ip) => registrations.push((r, ip)),
            Err(reason) => exclude("registration", &key.id(), reason),
        }
    }
    Screened {
        backends,
        frontends,
        registrations,
        excluded,
    }
}

/// An API address a member advertises, if it is a plain `host:port` or `[v6]:port` (a peer
/// may send anything).
fn safe_api_addr(addr: &Option<String>) -> Option<String> {
    let a = addr.as_deref()?;
    if a.starts_with('[') {
        return a
            .parse::<std::net::SocketAddr>()
            .is_ok()
            .then(|| a.to_string());
    }
    let (host, port) = a.rsplit_once(':')?;
    let plain = !host.contains(['[', ']', ':']);
    (plain
        && model::validate_host("api_addr", host).is_ok()
        && model::parse_port("api_addr", port).is_ok())
    .then(|| a.to_string())
}

/// Builds the context for one template from the node's view, with free-form lines checked
/// against the allow-list.
pub fn build(node_id: &str, nv: &NodeView, vars: &BTreeMap<String, String>) -> RenderContext {
    build_screened(node_id, nv, vars, Snippets::AllowListed).0
}

/// [`build_screened`], also leaving out what `quarantine` holds.
pub fn build_without(
    node_id: &str,
    nv: &NodeView,
    vars: &BTreeMap<String, String>,
    snippets: Snippets,
    quarantine: &Quarantine,
    names: &Names<'_>,
) -> (RenderContext, Vec<Excluded>) {
    build_inner(node_id, nv, vars, snippets, quarantine, names)
}

/// Builds the context for one template from what of the node's view passes validation (free-form
/// lines checked as `snippets` says), and says what was left out.
pub fn build_screened(
    node_id: &str,
    nv: &NodeView,
    vars: &BTreeMap<String, String>,
    snippets: Snippets,
) -> (RenderContext, Vec<Excluded>) {
    build_inner(
        node_id,
        nv,
        vars,
        snippets,
        &Quarantine::new(),
        &Names::Verbatim,
    )
}

fn build_inner(
    node_id: &str,
    nv: &NodeView,
    vars: &BTreeMap<String, String>,
    snippets: Snippets,
    quarantine: &Quarantine,
    names: &Names<'_>,
) -> (RenderContext, Vec<Excluded>) {
    let screened = screen(nv, snippets, quarantine, names);
    let by_app = group_by_app(&screened.registrations);
    let ctx = RenderContext {
        node: NodeCtx {
            id: node_id.to_string(),
        },
        // A member's id comes from its peer as it is: one that is not a plain name (a hostile
        // peer's `x\nlua-load ...`) is left out rather than handed to a template.
        members: nv
            .members
            .iter()
            .filter(|m| crate::config::is_node_id(&m.node_id))
            .map(|m| MemberCtx {
                node_id: m.node_id.clone(),
                gossip_addr: m.gossip_addr.to_string(),
                api_addr: safe_api_addr(&m.api_addr),
                live: m.live,
                is_self: m.is_self,
            })
            .collect(),
        // The view's maps are BTreeMaps keyed by name / registration key: already sorted.
        frontends: screened
            .frontends
            .iter()
            .map(|f| frontend(&screened.backends, f))
            .collect(),
        backends: screened
            .backends
            .values()
            .map(|b| backend(&by_app, b))
            .collect(),
        registrations: screened
            .registrations
            .iter()
            .map(|(r, _)| RegistrationCtx {
                id: r.key.id(),
                app: r.key.app.clone(),
                version: r.key.version.clone(),
                host: r.key.host.clone(),
                port: r.key.port,
                meta: r.meta.clone(),
            })
            .collect(),
        vars: vars.clone(),
    };
    let mut ctx = ctx;
    // Slots as a fresh node would hand them out; the apply stage re-assigns them from what
    // HAProxy runs, so that servers keep their slots.
    fresh_slots(&mut ctx, &DEFAULT_SLOTS);
    (ctx, screened.excluded)
}

/// Slots as a template without settings of its own gets them.
const DEFAULT_SLOTS: slots::SlotSettings = slots::SlotSettings {
    block: 10,
    drain_ms: 0,
};

/// Hands out every backend's slots afresh (no earlier table) with `settings`.
pub fn fresh_slots(ctx: &mut RenderContext, settings: &slots::SlotSettings) {
    let table = slots::assign(
        &slots::Table::default(),
        &slots::wanted_of(&ctx.backends),
        0,
        settings,
    );
    fill_slots(ctx, &table);
}

/// Sets every backend's `slots` from `table`.
pub fn fill_slots(ctx: &mut RenderContext, table: &slots::Table) {
    for b in &mut ctx.backends {
        b.slots = table
            .backends
            .get(&b.name)
            .map(|s| slots::slot_ctxs(s))
            .unwrap_or_default();
    }
}

/// The context with every slot's runtime fields blanked: what renders from it is the config's
/// structure, the same for any two contexts whose differences the runtime API can apply.
pub fn structure_of(ctx: &RenderContext) -> RenderContext {
    let mut out = ctx.clone();
    for b in &mut out.backends {
        b.slots = slots::blank_ctxs(b.slots.len());
    }
    out
}
