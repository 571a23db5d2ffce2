//! What each op does once it is routed and authorized: calls on the [`Node`] and the replies.

use std::collections::BTreeMap;
use std::convert::Infallible;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use super::routes::{Kind, Op, PathKey};
use super::wire::{
    json_ok, json_reply, no_content, ok, parse_ttl, with_resource, CompatRegistration,
    RegisterBody, Request, Result, V1Registration,
};
use super::Api;
use crate::auth::Caller;
use crate::model::{self, Backend, Frontend, RegKey, Snippets};
use crate::node::{Entity, WriteMode};

impl Api {
    /// Runs an authorized op.
    pub(super) async fn execute(
        &self,
        op: Op<'_>,
        req: &Request<'_>,
        caller: &Caller,
    ) -> Result<Response> {
        match op {
            Op::CompatRegister(k) => {
                let key = path_key(&k)?;
                self.allow_registration(caller, &key)?;
                let live = self.node.register(key, None, BTreeMap::new()).await?;
                json_ok(&CompatRegistration::from(&live))
            }
            Op::CompatList { app, version } => {
                let regs = self.node.registrations(app, version, None);
                json_ok(
                    &regs
                        .iter()
                        .map(CompatRegistration::from)
                        .collect::<Vec<_>>(),
                )
            }
            Op::ListRegistrations => {
                let app = req.query_param("app");
                let version = req.query_param("version");
                let host = req.query_param("host");
                let regs =
                    self.node
                        .registrations(app.as_deref(), version.as_deref(), host.as_deref());
                json_ok(&regs.iter().map(V1Registration::from).collect::<Vec<_>>())
            }
            Op::Register => {
                let body: RegisterBody = req.json()?;
                let key = RegKey::new(&body.app, &body.version, &body.host, body.port)?;
                let ttl = parse_ttl(&body.ttl)?;
                self.allow_registration(caller, &key)?;
                let live = self.node.register(key, ttl, body.meta).await?;
                json_ok(&V1Registration::from(&live))
            }
            Op::GetRegistration(k) => {
                let key = path_key(&k)?;
                let found = self
                    .node
                    .registrations(Some(&key.app), Some(&key.version), Some(&key.host))
                    .into_iter()
                    .find(|r| r.key == key);
                match found {
                    Some(r) => json_ok(&V1Registration::from(&r)),
                    None => Err(ApiError::not_found("Registration not found")),
                }
            }
            Op::Deregister(k) => {
                let key = path_key(&k)?;
                self.allow_registration(caller, &key)?;
                if !self.node.deregister(key).await {
                    return Err(ApiError::not_found("Registration not found"));
                }
                no_content()
            }
            Op::ListEntities(Kind::Backend) => self.list::<Backend>(),
            Op::ListEntities(Kind::Frontend) => self.list::<Frontend>(),
            Op::CreateEntity(Kind::Backend) => self.create::<Backend>(req, caller).await,
            Op::CreateEntity(Kind::Frontend) => self.create::<Frontend>(req, caller).await,
            Op::GetEntity(Kind::Backend, name) => self.get::<Backend>(name),
            Op::GetEntity(Kind::Frontend, name) => self.get::<Frontend>(name),
            Op::UpdateEntity(Kind::Backend, name) => {
                self.update::<Backend>(req, caller, name).await
            }
            Op::UpdateEntity(Kind::Frontend, name) => {
                self.update::<Frontend>(req, caller, name).await
            }
            Op::DeleteEntity(Kind::Backend, name) => self.delete::<Backend>(name).await,
            Op::DeleteEntity(Kind::Frontend, name) => self.delete::<Frontend>(name).await,
            Op::Ui(file) => super::ui::asset(file),
            Op::Switch(kind, name) => self.switch(kind, name, req, caller).await,
            Op::Fleet => match &self.hooks.fleet {
                Some(fleet) => json_ok(&fleet.report().await),
                None => Err(ApiError::not_found("this node has no fleet status")),
            },
            Op::Members => ok(json!(self.node.members())),
            Op::State => json_ok(&crate::cluster::StateDump::new(
                self.node.node_id(),
                &self.node.current_view(),
                self.node.members(),
            )),
            Op::Status => ok(self.status()),
            Op::Events => self.events(req),
            Op::Health => match self.hooks.health.as_ref().map(|h| h()) {
                Some(Err(failure)) => Err(ApiError::failed(failure)),
                _ => ok(json!({"status": "ok"})),
            },
            Op::Metrics => Ok(self.metrics_text()),
            Op::Ready => self.ready(),
        }
    }

    /// Applies the registration policy to a caller that is not an admin.
    fn allow_registration(&self, caller: &Caller, key: &RegKey) -> Result<()> {
        let guard = self.security.guard();
        guard
            .check_registration(caller, &key.app, &key.host)
            .map_err(|refusal| {
                let what = match &caller.credential {
                    Some(c) => format!("registration of {key} by {c:?}"),
                    None => format!("registration of {key}"),
                };
                self.refused("registration_policy", caller, what, &refusal.to_string());
                ApiError::forbidden(format!("registration of {key} refused: {refusal}"))
            })
    }

    /// How the caller's free-form lines are checked: raw only where the node allows config
    /// snippets and the caller is an admin by credential.
    pub(super) fn snippets_for(&self, caller: &Caller) -> Snippets {
        if self.security.config_snippets() && caller.is_credentialed_admin() {
            Snippets::Raw
        } else {
            Snippets::AllowListed
        }
    }

    /// Refuses a write that would make HAProxy refuse a template's render (on a node that has
    /// templates).
    pub(super) async fn preflight<E: Entity>(&self, name: &str, value: Option<E>) -> Result<()> {
        let Some(hook) = &self.hooks.preflight else {
            return Ok(());
        };
        hook(E::change(name, value))
            .await
            .map_err(|r| ApiError::invalid(format!("invalid {}: {}", r.field, r.message)))
    }

    fn list<E: Entity>(&self) -> Result<Response> {
        ok(Value::Array(
            self.node
                .list::<E>()
                .iter()
                .map(|e| with_resource(e, E::KIND))
                .collect(),
        ))
    }

    fn get<E: Entity>(&self, name: &str) -> Result<Response> {
        match self.node.get::<E>(name) {
            Some(e) => ok(with_resource(&e, E::KIND)),
            None => Err(ApiError::not_found(format!("{} not found", E::KIND))),
        }
    }

    async fn create<E: Entity + for<'de> Deserialize<'de>>(
        &self,
        req: &Request<'_>,
        caller: &Caller,
    ) -> Result<Response> {
        let entity: E = req.json()?;
        let name = entity.name().to_string();
        let snippets = self.snippets_for(caller);
        entity.validate(snippets)?;
        // Held from the existence check to the write: a concurrent create of the same name on
        // this node waits, then gets its 409.
        let guard = self.node.lock_entities().await;
        if self.node.get::<E>(&name).is_some() {
            return Err(ApiError::conflict(format!("{} already exists", E::KIND)));
        }
        self.preflight(&name, Some(entity.clone())).await?;
        self.node
            .put(&guard, entity.clone(), WriteMode::Create, snippets)
            .await?;
        let mut resp = json_reply(StatusCode::CREATED, &with_resource(&entity, E::KIND));
        let location = format!("/{}s/{}", E::KIND.to_ascii_lowercase(), name);
        resp.headers_mut().insert(
            "location",
            HeaderValue::from_str(&location).expect("validated names are header-safe"),
        );
        Ok(resp)
    }

    async fn update<E: Entity + for<'de> Deserialize<'de>>(
        &self,
        req: &Request<'_>,
        caller: &Caller,
        name: &str,
    ) -> Result<Response> {
        let not_found = || ApiError::not_found(format!("{} not found", E::KIND));
        // The fields given replace the current ones and the rest is kept, as the 0.2.1
        // client's `updateBackend(backend, update)` expects; what is stored (and replicated)
        // is always the whole resulting value.
        let body = req.json_value()?;
        if let Some(n) = body.get("name") {
            if n.as_str() != Some(name) {
                return Err(ApiError::invalid(format!(
                    "invalid name: the body's name must match the path ({:?})",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
        // Held from reading the current value to writing the merged one: two concurrent partial
        // updates on this node each keep the other's fields.
        let guard = self.node.lock_entities().await;
        let current = self.node.get::<E>(name).ok_or_else(not_found)?;
        let mut merged = match serde_json::to_value(&current) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ApiError::internal("cannot represent the current value")),
        };
        merged.extend(body);
        let entity: E = super::wire::strict_value(Value::Object(merged))?;
        let snippets = self.snippets_for(caller);
        entity.validate(snippets)?;
        self.preflight(name, Some(entity.clone())).await?;
        self.node
            .put(&guard, entity.clone(), WriteMode::Update, snippets)
            .await?;
        ok(with_resource(&entity, E::KIND))
    }

    async fn delete<E: Entity>(&self, name: &str) -> Result<Response> {
        let guard = self.node.lock_entities().await;
        if self.node.get::<E>(name).is_none() {
            return Err(ApiError::not_found(format!("{} not found", E::KIND)));
        }
        self.preflight::<E>(name, None).await?;
        self.node.delete::<E>(&guard, name).await?;
        no_content()
    }

    fn metrics_text(&self) -> Response {
        let mut resp = self.metrics.encode().into_response();
        resp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        resp
    }

    /// 200 once the node has caught up with its peers and every other stage is ready (the last
    /// apply succeeded); 503 `NOT_READY` with the reason otherwise.
    fn ready(&self) -> Result<Response> {
        if !self.node.is_ready() {
            return Err(ApiError::not_ready("waiting to catch up with peers"));
        }
        if let Some(hook) = &self.hooks.ready {
            hook().map_err(ApiError::not_ready)?;
        }
        ok(json!({"status": "ready"}))
    }

    fn status(&self) -> Value {
        let (live, backends, frontends, leases) = self.node.counts();
        let members = self.node.members();
        let (refused_total, refused_client) = self.connections.refused();
        let mut v = json!({
            "node_id": self.node.node_id(),
            "cluster_id": self.node.config().cluster_id,
            "ready": self.node.is_ready(),
            "members_live": members.iter().filter(|m| m.live).count(),
            "members": members,
            "registrations_live": live,
            "leases_held": leases,
            "backends": backends,
            "frontends": frontends,
            "degraded": self.node.views().borrow().degraded.clone(),
            "registrations_held": self.node.views().borrow().held.len(),
            "snapshot_entities_held_back": self.node.held_back_entities(),
            "api": {
                "tls": self.security.tls_enabled(),
                "credentials": if self.security.guard().loopback_only() { "none (loopback only)" } else { "required" },
                "connections_open": self.connections.open(),
                "connections_refused": { "total_cap": refused_total, "per_client_cap": refused_client },
            },
        });
        if let Some(hook) = &self.hooks.status {
            if let (Some(m), Value::Object(extra)) = (v.as_object_mut(), hook()) {
                m.extend(extra);
            }
        }
        v
    }

    /// Server-Sent Events: one event per change this node observes, until the client leaves or
    /// the node stops. A client that falls too far behind is told to re-list (`resync`).
    fn events(&self, req: &Request<'_>) -> Result<Response> {
        let permit = self
            .event_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::too_many(
                "TOO_MANY_EVENT_STREAMS",
                "this node has as many event streams open as it takes (limits.max_event_streams)",
                5,
            )
            })?;
        let node = self.node.clone();
        let state = move || {
            serde_json::to_value(crate::cluster::StateDump::new(
                node.node_id(),
                &node.current_view(),
                node.members(),
            ))
            .unwrap_or(Value::Null)
        };
        // A client resuming (`Last-Event-ID`) gets the events it missed, or, when this node no
        // longer keeps them all (or the id is another process's), the whole state first.
        let (rx, first) = match req.last_event_id {
            None => (self.node.subscribe_events(), Vec::new()),
            Some(id) => match self.node.resume_events(&String::from_utf8_lossy(id)) {
                (rx, Some(missed)) => (rx, missed.iter().map(sse_event).collect()),
                (rx, None) => (rx, vec![resync(0, &state)]),
            },
        };
        let mut stop = self.shutdown.clone();
        // The permit lives as long as the stream.
        let stream = futures_util::stream::iter(first)
            .chain(event_stream(rx, state))
            .map(move |item| {
                let _ = &permit;
                Ok::<_, Infallible>(item)
            })
            .take_until(Box::pin(async move { stop.wait().await }));
        Ok(warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response())
    }
}

/// One numbered event as SSE: its kind, its id (`<epoch>-<seq>`), its JSON.
fn sse_event(n: &crate::events::Numbered) -> warp::sse::Event {
    warp::sse::Event::default()
        .event(n.event.kind())
        .id(n.id())
        .json_data(&n.event)
        .unwrap_or_else(|_| warp::sse::Event::default().event("error"))
}

/// The whole state, for a subscriber that cannot be given the events it missed.
fn resync(missed: u64, state: &impl Fn() -> Value) -> warp::sse::Event {
    warp::sse::Event::default()
        .event("resync")
        .json_data(json!({"missed": missed, "state": state()}))
        .unwrap_or_else(|_| warp::sse::Event::default().event("error"))
}

pub(super) fn path_key(k: &PathKey<'_>) -> Result<RegKey> {
    let port = model::parse_port("port", k.port)?;
    Ok(RegKey::new(k.app, k.version, k.host, port)?)
}

/// The SSE events of a subscription: every event in order; after falling behind (the events in
/// between are gone), a `resync` event with the whole state (`state()`), and the events after it.
fn event_stream(
    rx: tokio::sync::broadcast::Receiver<crate::events::Numbered>,
    state: impl Fn() -> Value + Send + Sync + 'static,
) -> impl futures_util::Stream<Item = warp::sse::Event> {
    let state = std::sync::Arc::new(state);
    futures_util::stream::unfold(rx, move |mut rx| {
        let state = state.clone();
        async move {
            let item = match rx.recv().await {
                Ok(n) => sse_event(&n),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => resync(n, &*state),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, rx))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::model::RegKey;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_the_whole_state_then_the_events_after_it() {
        let (tx, rx) = tokio::sync::broadcast::channel(8);
        let online = |port| Event::Online {
            registration: RegKey::new("web", "1", "10.0.0.1", port).unwrap(),
        };
        // Twelve events into a buffer of eight before the subscriber reads anything.
        let mut journal = crate::events::Journal::new(42, 16);
        for port in 1..=12 {
            tx.send(journal.push(online(port))).unwrap();
        }
        let stream = event_stream(rx, || json!({"registrations": ["the whole state"]}));
        let texts: Vec<String> = stream.take(9).map(|e| e.to_string()).collect().await;
        assert!(texts[0].starts_with("event:resync\n"), "{}", texts[0]);
        assert!(texts[0].contains(r#""missed":4"#), "{}", texts[0]);
        assert!(texts[0].contains("the whole state"), "{}", texts[0]);
        // Then the eight events still buffered, in order, the last one being port 12.
        assert!(texts[1].contains(r#""port":5"#), "{}", texts[1]);
        assert!(texts[8].contains(r#""port":12"#), "{}", texts[8]);
        // Each with its id, for a client that resumes with Last-Event-ID.
        assert!(texts[8].contains("id:42-12\n"), "{}", texts[8]);
    }
}
