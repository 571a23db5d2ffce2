//! Blue/green in one call: `POST /v1/backends/:name/switch {"version"}` points a backend at
//! another version of its app, `POST /v1/frontends/:name/switch {"backend"}` a frontend at
//! another backend. A target with no live server would take the traffic down: refused (409
//! `NO_LIVE_SERVERS`) unless `"force": true`. The reply carries the entities' digest before
//! and after, so a client can wait until every load balancer runs the switch (`/v1/fleet`).

use serde::Deserialize;
use serde_json::json;
use warp::reply::Response;

use super::error::ApiError;
use super::routes::Kind;
use super::wire::{ok, with_resource, Request, Result};
use super::Api;
use crate::auth::Caller;
use crate::model::{Backend, Frontend};
use crate::node::{Entity, WriteMode};
use crate::registry::ViewDigest;

#[derive(Deserialize)]
struct SwitchBody {
    /// The version a backend is to serve.
    #[serde(default)]
    version: Option<String>,
    /// The backend a frontend is to serve.
    #[serde(default)]
    backend: Option<String>,
    /// Switch even to a target with no live server.
    #[serde(default)]
    force: bool,
}

impl Api {
    pub(super) async fn switch(
        &self,
        kind: Kind,
        name: &str,
        req: &Request<'_>,
        caller: &Caller,
    ) -> Result<Response> {
        let body: SwitchBody = req.json()?;
        let snippets = self.snippets_for(caller);
        // Held from reading the current value to writing the switched one.
        let guard = self.node.lock_entities().await;
        let before = self.entities_digest();
        let (what, from, to, live, value) = match kind {
            Kind::Backend => {
                if body.backend.is_some() {
                    return Err(ApiError::invalid(
                        "invalid backend switch: it takes `version`, not `backend`",
                    ));
                }
                let version = body.version.ok_or_else(|| {
                    ApiError::invalid("invalid backend switch: missing field `version`")
                })?;
                let current = self.current::<Backend>(name)?;
                let mut next = current.clone();
                next.version = version;
                next.validate(snippets)?;
                let what = format!("backend {name}");
                let live = self.live_servers(&what, &next.app, &next.version, body.force)?;
                self.preflight(name, Some(next.clone())).await?;
                let value = with_resource(&next, Backend::KIND);
                let to = next.version.clone();
                self.node
                    .put(&guard, next, WriteMode::Update, snippets)
                    .await?;
                ("backend", current.version, to, live, value)
            }
            Kind::Frontend => {
                if body.version.is_some() {
                    return Err(ApiError::invalid(
                        "invalid frontend switch: it takes `backend`, not `version`",
                    ));
                }
                let target = body.backend.ok_or_else(|| {
                    ApiError::invalid("invalid frontend switch: missing field `backend`")
                })?;
                let current = self.current::<Frontend>(name)?;
                let Some(be) = self.node.get::<Backend>(&target) else {
                    return Err(ApiError::invalid(format!(
                        "invalid frontend switch: no backend {:?}",
                        target.chars().take(64).collect::<String>()
                    )));
                };
                let mut next = current.clone();
                next.backend = target;
                next.validate(snippets)?;
                let what = format!("frontend {name}");
                let live = self.live_servers(&what, &be.app, &be.version, body.force)?;
                self.preflight(name, Some(next.clone())).await?;
                let value = with_resource(&next, Frontend::KIND);
                let to = next.backend.clone();
                self.node
                    .put(&guard, next, WriteMode::Update, snippets)
                    .await?;
                ("frontend", current.backend, to, live, value)
            }
        };
        let after = self.entities_digest();
        drop(guard);
        tracing::info!(kind = what, name = %name, from = %from, to = %to, live_servers = live,
            forced = live == 0, "switched");
        ok(json!({
            "kind": what,
            "name": name,
            "from": from,
            "to": to,
            "live_servers": live,
            "forced": live == 0,
            "entities_before": before,
            "entities_after": after,
            "value": value,
        }))
    }

    /// Live servers of `app@version`; none is a refusal unless `force`.
    fn live_servers(&self, what: &str, app: &str, version: &str, force: bool) -> Result<usize> {
        let live = self
            .node
            .registrations(Some(app), Some(version), None)
            .len();
        if live == 0 && !force {
            return Err(ApiError::no_live_servers(format!(
                "{what} would serve {app}@{version}, which has no live servers: register some first, or force the switch"
            )));
        }
        Ok(live)
    }

    fn current<E: Entity>(&self, name: &str) -> Result<E> {
        self.node
            .get::<E>(name)
            .ok_or_else(|| ApiError::not_found(format!("{} not found", E::KIND)))
    }

    /// The entities' part of the view digest, as this node's registry has them now.
    fn entities_digest(&self) -> String {
        let backends = self
            .node
            .list::<Backend>()
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        let frontends = self
            .node
            .list::<Frontend>()
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect();
        format!("{:016x}", ViewDigest::entities_of(&backends, &frontends))
    }
}
