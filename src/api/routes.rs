//! The routing table: method and path segments to an [`Op`], and what each op needs (its
//! scope). Pure: no I/O, nothing read but the request line, so that authorization runs before
//! any body is read.

use warp::http::Method;

use super::error::ApiError;
use crate::auth::{Need, Scope};

/// Backends or frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backend,
    Frontend,
}

/// A registration named by the path: `:app/:version/:host/:port`, not yet validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathKey<'a> {
    pub app: &'a str,
    pub version: &'a str,
    pub host: &'a str,
    pub port: &'a str,
}

/// One thing the API can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// `POST /registrations/:app/:version/:host/:port` (0.2.1).
    CompatRegister(PathKey<'a>),
    /// `GET /registrations[/:app[/:version]]` (0.2.1).
    CompatList {
        app: Option<&'a str>,
        version: Option<&'a str>,
    },
    /// `GET /v1/registrations?app=&version=&host=`.
    ListRegistrations,
    /// `POST /v1/registrations` with a JSON body.
    Register,
    GetRegistration(PathKey<'a>),
    Deregister(PathKey<'a>),
    ListEntities(Kind),
    CreateEntity(Kind),
    GetEntity(Kind, &'a str),
    UpdateEntity(Kind, &'a str),
    DeleteEntity(Kind, &'a str),
    /// `POST /v1/backends/:name/switch` (`{"version"}`) or `/v1/frontends/:name/switch`
    /// (`{"backend"}`): blue/green, refused when the target has no live server unless forced.
    Switch(Kind, &'a str),
    /// `GET /v1/fleet`: every load balancer's apply state.
    Fleet,
    /// `GET /ui`, `/ui/:file`: the dashboard's files (open: they hold no data).
    Ui(&'a str),
    Members,
    State,
    Status,
    Events,
    Health,
    Metrics,
    Ready,
}

impl Op<'_> {
    /// The scope a caller needs.
    pub fn need(&self) -> Need {
        use Op::*;
        match self {
            Health | Ready | Ui(_) => Need::Open,
            CompatRegister(_) | Register | Deregister(_) => Need::Scope(Scope::Register),
            CreateEntity(_) | UpdateEntity(..) | DeleteEntity(..) | Switch(..) => {
                Need::Scope(Scope::Admin)
            }
            CompatList { .. }
            | ListRegistrations
            | GetRegistration(_)
            | ListEntities(_)
            | GetEntity(..)
            | Members
            | Fleet
            | State
            | Status
            | Events
            | Metrics => Need::Scope(Scope::Read),
        }
    }

    /// Whether the op reads a request body.
    pub fn takes_body(&self) -> bool {
        matches!(
            self,
            Op::Register | Op::CreateEntity(_) | Op::UpdateEntity(..) | Op::Switch(..)
        )
    }

    /// Whether the op changes state (refusals of those are always logged).
    pub fn is_write(&self) -> bool {
        matches!(self.need(), Need::Scope(Scope::Register | Scope::Admin))
    }
}

/// Routes a request: the route's label (for metrics) and the op, or the error (404, or 405
/// with `Allow`).
pub fn route<'a>(method: &Method, segs: &[&'a str]) -> (&'static str, Result<Op<'a>, ApiError>) {
    let pick =
        |label: &'static str, allowed: Vec<(Method, Op<'a>)>, list: &'static str| match allowed
            .iter()
            .find(|(m, _)| m == method)
        {
            Some((_, op)) => (label, Ok(*op)),
            None => (label, Err(ApiError::method_not_allowed(list))),
        };
    let entity_kind = |s: &str| match s {
        "backends" => Some(Kind::Backend),
        "frontends" => Some(Kind::Frontend),
        _ => None,
    };
    match segs {
        ["registrations", app, version, host, port] => pick(
            "/registrations/:app/:version/:host/:port",
            vec![(
                Method::POST,
                Op::CompatRegister(PathKey {
                    app,
                    version,
                    host,
                    port,
                }),
            )],
            "POST",
        ),
        ["registrations"] | ["registrations", _] | ["registrations", _, _] => pick(
            "/registrations[/:app[/:version]]",
            vec![(
                Method::GET,
                Op::CompatList {
                    app: segs.get(1).copied(),
                    version: segs.get(2).copied(),
                },
            )],
            "GET",
        ),
        [kind] | ["v1", kind] if entity_kind(kind).is_some() => {
            let k = entity_kind(kind).expect("checked by the guard");
            let label = if k == Kind::Backend {
                "/backends"
            } else {
                "/frontends"
            };
            pick(
                label,
                vec![
                    (Method::GET, Op::ListEntities(k)),
                    (Method::POST, Op::CreateEntity(k)),
                ],
                "GET, POST",
            )
        }
        [kind, name] | ["v1", kind, name] if entity_kind(kind).is_some() => {
            let k = entity_kind(kind).expect("checked by the guard");
            let label = if k == Kind::Backend {
                "/backends/:name"
            } else {
                "/frontends/:name"
            };
            pick(
                label,
                vec![
                    (Method::GET, Op::GetEntity(k, name)),
                    (Method::PUT, Op::UpdateEntity(k, name)),
                    (Method::DELETE, Op::DeleteEntity(k, name)),
                ],
                "GET, PUT, DELETE",
            )
        }
        ["v1", kind, name, "switch"] if entity_kind(kind).is_some() => {
            let k = entity_kind(kind).expect("checked by the guard");
            let label = if k == Kind::Backend {
                "/v1/backends/:name/switch"
            } else {
                "/v1/frontends/:name/switch"
            };
            pick(label, vec![(Method::POST, Op::Switch(k, name))], "POST")
        }
        ["v1", "registrations"] => pick(
            "/v1/registrations",
            vec![
                (Method::GET, Op::ListRegistrations),
                (Method::POST, Op::Register),
            ],
            "GET, POST",
        ),
        ["v1", "registrations", app, version, host, port] => {
            let key = PathKey {
                app,
                version,
                host,
                port,
            };
            pick(
                "/v1/registrations/:app/:version/:host/:port",
                vec![
                    (Method::GET, Op::GetRegistration(key)),
                    (Method::DELETE, Op::Deregister(key)),
                ],
                "GET, DELETE",
            )
        }
        ["v1", "members"] => pick("/v1/members", vec![(Method::GET, Op::Members)], "GET"),
        ["v1", "fleet"] => pick("/v1/fleet", vec![(Method::GET, Op::Fleet)], "GET"),
        ["ui"] => pick("/ui", vec![(Method::GET, Op::Ui(""))], "GET"),
        ["ui", file] => pick("/ui/:file", vec![(Method::GET, Op::Ui(file))], "GET"),
        ["v1", "state"] => pick("/v1/state", vec![(Method::GET, Op::State)], "GET"),
        ["v1", "status"] => pick("/v1/status", vec![(Method::GET, Op::Status)], "GET"),
        ["v1", "events"] => pick("/v1/events", vec![(Method::GET, Op::Events)], "GET"),
        ["health"] => pick("/health", vec![(Method::GET, Op::Health)], "GET"),
        ["metrics"] => pick("/metrics", vec![(Method::GET, Op::Metrics)], "GET"),
        ["ready"] => pick("/ready", vec![(Method::GET, Op::Ready)], "GET"),
        _ => ("unknown", Err(ApiError::not_found("Not found"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(method: Method, path: &str) -> Result<Need, u16> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        route(&method, &segs)
            .1
            .map(|op| op.need())
            .map_err(|e| e.status.as_u16())
    }

    #[test]
    fn every_route_needs_the_scope_its_purpose_implies() {
        let read = Ok(Need::Scope(Scope::Read));
        let register = Ok(Need::Scope(Scope::Register));
        let admin = Ok(Need::Scope(Scope::Admin));
        let open = Ok(Need::Open);
        for (method, path, expected) in [
            (Method::POST, "/registrations/web/1/10.0.0.1/80", register),
            (Method::GET, "/registrations", read),
            (Method::GET, "/registrations/web", read),
            (Method::GET, "/registrations/web/1", read),
            (Method::GET, "/backends", read),
            (Method::POST, "/backends", admin),
            (Method::GET, "/backends/web", read),
            (Method::PUT, "/backends/web", admin),
            (Method::DELETE, "/backends/web", admin),
            (Method::GET, "/frontends", read),
            (Method::POST, "/frontends", admin),
            (Method::PUT, "/frontends/www", admin),
            (Method::DELETE, "/v1/frontends/www", admin),
            (Method::GET, "/v1/registrations", read),
            (Method::POST, "/v1/registrations", register),
            (Method::GET, "/v1/registrations/web/1/10.0.0.1/80", read),
            (
                Method::DELETE,
                "/v1/registrations/web/1/10.0.0.1/80",
                register,
            ),
            (Method::GET, "/v1/members", read),
            (Method::GET, "/v1/fleet", read),
            (Method::GET, "/ui", open),
            (Method::GET, "/ui/app.js", open),
            (Method::POST, "/ui", Err(405)),
            (Method::POST, "/v1/backends/web/switch", admin),
            (Method::POST, "/v1/frontends/www/switch", admin),
            (Method::GET, "/v1/frontends/www/switch", Err(405)),
            (Method::POST, "/backends/web/switch", Err(404)),
            (Method::GET, "/v1/state", read),
            (Method::GET, "/v1/status", read),
            (Method::GET, "/v1/events", read),
            (Method::GET, "/metrics", read),
            (Method::GET, "/health", open),
            (Method::GET, "/ready", open),
            (Method::DELETE, "/registrations", Err(405)),
            (Method::PATCH, "/backends/web", Err(405)),
            (Method::GET, "/nope", Err(404)),
            (Method::GET, "/v1/backends/web/extra", Err(404)),
        ] {
            assert_eq!(need(method.clone(), path), expected, "{method} {path}");
        }
    }
}
