//! HAProxy's runtime API for server slots. One connection carries a batch of `set server`
//! commands followed by the read-back of the backends they touched (`show servers state`);
//! the read-back, not the commands' answers, decides whether HAProxy runs what bender asked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::slots::{self, Occupant, SlotState, Table};

/// One server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub backend: String,
    pub server: String,
    pub host: String,
    pub port: u16,
    pub weight: u16,
    /// What the admin state says (forced or inherited maintenance, drain, or neither).
    pub state: SlotState,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u8,
}

/// HAProxy's own view of a server: UP, DOWN (its checks fail), MAINT or DRAIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServerStatus {
    Up,
    Down,
    Maint,
    Drain,
}

impl ServerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Up => "UP",
            ServerStatus::Down => "DOWN",
            ServerStatus::Maint => "MAINT",
            ServerStatus::Drain => "DRAIN",
        }
    }
}

impl Observed {
    pub fn status(&self) -> ServerStatus {
        match self.state {
            SlotState::Maint => ServerStatus::Maint,
            SlotState::Drain => ServerStatus::Drain,
            SlotState::Ready if matches!(self.op_state, 1 | 2) => ServerStatus::Up,
            SlotState::Ready => ServerStatus::Down,
        }
    }
}

// srv_admin_state bits (HAProxy 2.6 `enum srv_admin`). 0x04 (configured `disabled`) stays set
// after `set server ... state ready` and means nothing on its own.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x20 | 0x40;
const ADMIN_DRAIN: u32 = 0x08 | 0x10;

/// Parses one or more `show servers state` dumps (format 1), each a version line, a `#`
/// header naming the fields, and one line per server. The header is read, not assumed, so a
/// HAProxy that adds fields still parses.
pub fn parse_servers_state(text: &str) -> Result<Vec<Observed>, String> {
    let mut out = Vec::new();
    let mut fields: Option<BTreeMap<&str, usize>> = None;
    let mut saw_header = false;
    for raw in text.lines() {
        // In interactive mode every answer is preceded by the "> " prompt.
        let mut line = raw;
        while let Some(rest) = line.strip_prefix("> ") {
            line = rest;
        }
        let line = line.trim_end();
        if let Some(header) = line.strip_prefix("# ") {
            let names: BTreeMap<&str, usize> = header
                .split_whitespace()
                .enumerate()
                .map(|(i, n)| (n, i))
                .collect();
            for need in [
                "be_name",
                "srv_name",
                "srv_addr",
                "srv_op_state",
                "srv_admin_state",
            ] {
                if !names.contains_key(need) {
                    return Err(format!("\"show servers state\" has no {need} field"));
                }
            }
            fields = Some(names);
            saw_header = true;
            continue;
        }
        if line.is_empty() {
            fields = None; // The end of one dump.
            continue;
        }
        let Some(f) = &fields else { continue };
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < f.len() {
            continue; // Not a server line (a message between dumps).
        }
        let get = |n: &str| f.get(n).map(|&i| cols[i]);
        let num = |n: &str| get(n).and_then(|v| v.parse::<u32>().ok());
        let admin = num("srv_admin_state").unwrap_or(0);
        let state = if admin & ADMIN_MAINT != 0 {
            SlotState::Maint
        } else if admin & ADMIN_DRAIN != 0 {
            SlotState::Drain
        } else {
            SlotState::Ready
        };
        out.push(Observed {
            backend: get("be_name").unwrap_or_default().to_string(),
            server: get("srv_name").unwrap_or_default().to_string(),
            host: get("srv_addr").unwrap_or_default().to_string(),
            port: num("srv_port").unwrap_or(0).min(u16::MAX as u32) as u16,
            weight: num("srv_uweight").unwrap_or(0).min(u16::MAX as u32) as u16,
            state,
            op_state: num("srv_op_state").unwrap_or(0).min(255) as u8,
        });
    }
    if !saw_header {
        let first = text
            .lines()
            .map(|l| l.trim_start_matches("> ").trim())
            .find(|l| !l.is_empty())
            .unwrap_or("");
        return Err(format!(
            "unexpected answer to \"show servers state\": {first:?}"
        ));
    }
    Ok(out)
}

/// The slots HAProxy runs, as a table (draining servers drain until `drain_until`).
pub fn observed_table(observed: &[Observed], drain_until: u64) -> Table {
    let mut table = Table::default();
    for o in observed {
        let Some(i) = slots::slot_index(&o.server) else {
            continue;
        };
        let slots = table.backends.entry(o.backend.clone()).or_default();
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        slots[i] = (o.state != SlotState::Maint).then(|| Occupant {
            host: o.host.clone(),
            port: o.port,
            weight: o.weight,
            draining_until: (o.state == SlotState::Drain).then_some(drain_until),
        });
    }
    table
}

/// Where HAProxy's slots differ from `want`, for the backends in `only` (all when `None`):
/// each a short description, empty when HAProxy runs exactly what `want` says.
pub fn mismatches(want: &Table, running: &Table, only: Option<&BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (backend, slots) in &want.backends {
        if only.is_some_and(|o| !o.contains(backend)) {
            continue;
        }
        let have = running.backends.get(backend);
        for (i, w) in slots.iter().enumerate() {
            let server = format!("{backend}/{}", slots::slot_name(i));
            let Some(h) = have.and_then(|h| h.get(i)) else {
                if w.is_some() {
                    out.push(format!("{server}: not in HAProxy"));
                }
                continue;
            };
            let (ws, hs) = (SlotState::of(w), SlotState::of(h));
            // A draining server in maintenance: a reload during its drain started it from the
            // file, where it is `disabled`. It takes no new requests either way.
            let drained = ws == SlotState::Drain && hs == SlotState::Maint;
            if ws != hs && !drained {
                out.push(format!(
                    "{server}: {} instead of {}",
                    hs.as_str(),
                    ws.as_str()
                ));
                continue;
            }
            if let (Some(w), Some(h)) = (w, h) {
                if (w.host.as_str(), w.port, w.weight) != (h.host.as_str(), h.port, h.weight) {
                    // (A slot in maintenance is not compared: `h` is None for it.)
                    out.push(format!(
                        "{server}: {}:{} weight {} instead of {}:{} weight {}",
                        h.host, h.port, h.weight, w.host, w.port, w.weight
                    ));
                }
            }
        }
    }
    out
}

/// Longest a batch may take: a base plus a little per command (HAProxy takes 0.15–0.5 ms each).
fn batch_timeout(lines: usize) -> Duration {
    Duration::from_secs(2) + Duration::from_micros(500) * lines as u32
}

/// Largest answer read (`show servers state` of 10,000 servers is ~1.5 MB).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Sends `lines` to the stats socket in one connection (interactive mode, so each line is a
/// command) and returns everything HAProxy answered.
pub async fn exchange(socket: &Path, lines: &[String]) -> Result<String, String> {
    let mut script = String::from("prompt\n");
    for l in lines {
        script.push_str(l);
        script.push('\n');
    }
    script.push_str("quit\n");
    let talk = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        // Written and read at once: a long batch's answers would otherwise fill the socket
        // buffer while HAProxy waits for us to read them.
        let (mut rd, mut wr) = stream.split();
        let write = async {
            wr.write_all(script.as_bytes()).await?;
            wr.shutdown().await
        };
        let mut answer = Vec::new();
        let mut limited = (&mut rd).take(MAX_ANSWER);
        let read = limited.read_to_end(&mut answer);
        let (w, r) = tokio::join!(write, read);
        w.map_err(|e| format!("cannot write to {}: {e}", socket.display()))?;
        r.map_err(|e| format!("cannot read from {}: {e}", socket.display()))?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let timeout = batch_timeout(lines.len());
    tokio::time::timeout(timeout, talk)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{} did not answer {} commands within {}",
                socket.display(),
                lines.len(),
                humantime::format_duration(timeout)
            ))
        })
}

/// What HAProxy's slots of `backends` are (all backends when empty).
pub async fn read(socket: &Path, backends: &BTreeSet<String>) -> Result<Vec<Observed>, String> {
    let lines: Vec<String> = if backends.is_empty() {
        vec!["show servers state".to_string()]
    } else {
        backends
            .iter()
            .map(|b| format!("show servers state {b}"))
            .collect()
    };
    parse_servers_state(&exchange(socket, &lines).await?)
}

/// Sends `commands` and reads back the backends they touched, in one connection. Returns what
/// those backends' slots are now.
pub async fn apply(
    socket: &Path,
    commands: &[slots::Command],
) -> Result<(Vec<Observed>, BTreeSet<String>), String> {
    let touched: BTreeSet<String> = commands.iter().map(|c| c.backend.clone()).collect();
    let mut lines: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    lines.extend(touched.iter().map(|b| format!("show servers state {b}")));
    let answer = exchange(socket, &lines).await?;
    Ok((parse_servers_state(&answer)?, touched))
}

/// Keeps only the lines of a saved `show servers state` dump that the next worker may apply:
/// servers in a live slot of `table` at the same address. A slot's state from the file would
/// otherwise override the new config (a freed slot made ready again, a moved server's old
/// port), since HAProxy restores a server's admin state and port but not its address.
pub fn filter_saved_state(dump: &str, table: &Table) -> String {
    let mut out = String::new();
    let mut header: Option<BTreeMap<String, usize>> = None;
    for line in dump.split_inclusive('\n') {
        let t = line.trim_end();
        if let Some(h) = t.strip_prefix("# ") {
            header = Some(
                h.split_whitespace()
                    .enumerate()
                    .map(|(i, n)| (n.to_string(), i))
                    .collect(),
            );
            out.push_str(line);
            continue;
        }
        let Some(f) = &header else {
            out.push_str(line); // The version line.
            continue;
        };
        let cols: Vec<&str> = t.split_whitespace().collect();
        let get = |n: &str| f.get(n).and_then(|&i| cols.get(i).copied());
        let (Some(be), Some(srv), Some(addr), Some(port)) = (
            get("be_name"),
            get("srv_name"),
            get("srv_addr"),
            get("srv_port"),
        ) else {
            continue;
        };
        let Some(i) = slots::slot_index(srv) else {
            out.push_str(line); // Not a slot: a server line of the template's own.
            continue;
        };
        let keep = table
            .backends
            .get(be)
            .and_then(|s| s.get(i))
            .and_then(Option::as_ref)
            .is_some_and(|o| {
                o.draining_until.is_none() && o.host == addr && port == o.port.to_string()
            });
        let admin: u32 = get("srv_admin_state")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        if keep && admin & (ADMIN_MAINT | ADMIN_DRAIN) == 0 {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interactive session of HAProxy 2.6.12 (prompt, two commands, a read-back).
    const SESSION: &str = "\n> 1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 be 1 slot1 127.0.0.1 0 5 1 1 0 1 0 0 8 0 0 0 - 1 - 0 0 - - 0\n3 be 2 slot2 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 1 - 0 0 - - 0\n\n> no need to change the addr, port changed from '1' to '9999' by 'stats socket command'\n\n> \n> \n> No such server.\n\n> 1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 be 1 slot1 127.0.0.1 2 4 7 1 0 1 0 0 8 0 0 0 - 9999 - 0 0 - - 0\n3 be 2 slot2 127.0.0.1 0 8 1 1 0 1 0 2 6 0 0 0 - 1 - 0 0 - - 0\n\n> ";

    #[test]
    fn an_interactive_session_parses_into_each_dump_s_servers() {
        let got = parse_servers_state(SESSION).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].state, SlotState::Maint);
        assert_eq!(got[0].status(), ServerStatus::Maint);
        // Configured `disabled` (0x04) alone, after `state ready`: ready, and up.
        let s1 = &got[2];
        assert_eq!(
            (
                s1.server.as_str(),
                s1.host.as_str(),
                s1.port,
                s1.weight,
                s1.state
            ),
            ("slot1", "127.0.0.1", 9999, 7, SlotState::Ready)
        );
        assert_eq!(s1.status(), ServerStatus::Up);
        assert_eq!(got[3].state, SlotState::Drain);
        let table = observed_table(&got[2..], 50);
        let slots = &table.backends["be"];
        assert_eq!(slots[0].as_ref().unwrap().port, 9999);
        assert_eq!(slots[1].as_ref().unwrap().draining_until, Some(50));
        assert!(parse_servers_state("Unknown command.\n").is_err());
    }

    #[test]
    fn mismatches_name_each_slot_that_differs() {
        let want = observed_table(&parse_servers_state(SESSION).unwrap()[2..], 1);
        assert!(mismatches(&want, &want, None).is_empty());
        let mut running = want.clone();
        running.backends.get_mut("be").unwrap()[0]
            .as_mut()
            .unwrap()
            .weight = 3;
        running.backends.get_mut("be").unwrap()[1]
            .as_mut()
            .unwrap()
            .draining_until = None;
        assert_eq!(
            mismatches(&want, &running, None),
            [
                "be/slot1: 127.0.0.1:9999 weight 3 instead of 127.0.0.1:9999 weight 7",
                "be/slot2: ready instead of drain"
            ]
        );
        assert!(mismatches(&want, &running, Some(&BTreeSet::new())).is_empty());
        // A draining server found in maintenance (a reload during its drain) is no mismatch.
        let mut reloaded = want.clone();
        reloaded.backends.get_mut("be").unwrap()[1] = None;
        assert!(mismatches(&want, &reloaded, None).is_empty());
    }

    #[test]
    fn a_saved_state_keeps_only_live_slots_at_their_address() {
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord\n\
3 be 1 slot1 10.0.0.1 2 0 1 1 0 1 0 0 8 0 0 0 - 80 -\n\
3 be 2 slot2 10.0.0.2 2 0 1 1 0 1 0 0 8 0 0 0 - 80 -\n\
3 be 3 slot3 10.0.0.3 2 8 1 1 0 1 0 0 8 0 0 0 - 80 -\n\
3 be 4 web1 10.0.0.9 2 0 1 1 0 1 0 0 8 0 0 0 - 80 -\n";
        let occupant = |h: &str| {
            Some(Occupant {
                host: h.into(),
                port: 80,
                weight: 1,
                draining_until: None,
            })
        };
        let table = Table {
            backends: BTreeMap::from([(
                "be".to_string(),
                vec![
                    occupant("10.0.0.1"),
                    occupant("10.0.0.7"),
                    occupant("10.0.0.3"),
                ],
            )]),
        };
        let kept = filter_saved_state(dump, &table);
        let servers: Vec<&str> = kept
            .lines()
            .skip(2)
            .map(|l| l.split(' ').nth(3).unwrap())
            .collect();
        // slot2 moved to another address; slot3 was draining; web1 is not a slot.
        assert_eq!(servers, ["slot1", "web1"]);
        assert!(kept.starts_with("1\n# be_id"));
    }
}
