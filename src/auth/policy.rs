//! The registration policy: which hosts a `register` client may register (and deregister), for
//! which apps. A pure function of the configured rules, who is asking and what they ask for.
//!
//! By default a client may only register its own address: the source address of its connection,
//! or a name or address its client certificate is valid for. That alone stops a client that can
//! reach the API from drawing another app's traffic to a host of its own, or from deregistering
//! the real servers. Rules (`[[registration.allow]]`) grant more to chosen credentials or client
//! networks. A client that rules cover may register only the apps those rules list (its own
//! address, and the hosts they list): a token for the web servers that registers `web` only, or
//! a deploy tool that registers other hosts, say.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::validate_host;

/// What happens to a client that no rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultRule {
    /// It may register its own address only, for any app.
    #[default]
    OwnAddress,
    /// It may register nothing.
    Deny,
    /// It may register any host for any app (the behaviour of bender 0.2.1).
    Any,
}

impl DefaultRule {
    fn key(self) -> &'static str {
        match self {
            DefaultRule::OwnAddress => "registration.default = \"own-address\"",
            DefaultRule::Deny => "registration.default = \"deny\"",
            DefaultRule::Any => "registration.default = \"any\"",
        }
    }
}

/// `[registration]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    #[serde(default)]
    pub default: DefaultRule,
    #[serde(default, rename = "allow")]
    pub rules: Vec<RuleConfig>,
}

/// One `[[registration.allow]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Named in refusals and logs.
    pub name: String,
    /// Names of `[[auth.token]]` / `[[auth.client_cert]]` entries this rule covers.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Client networks this rule covers (whatever their credential).
    #[serde(default)]
    pub clients: Vec<IpNet>,
    /// Apps its clients may register: names, or "*" for any.
    pub apps: Vec<String>,
    /// Hosts its clients may register besides their own address: addresses, networks
    /// ("10.0.1.0/24"), DNS names, or "*" for any.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A host pattern of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Net(IpNet),
    Name(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<HostPattern, String> {
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(HostPattern::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostPattern::Net(IpNet::from(ip)));
        }
        validate_host("host", s)
            .map(|_| HostPattern::Name(s.to_ascii_lowercase()))
            .map_err(|e| e.reason)
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Net(net) => host
                .parse::<IpAddr>()
                .is_ok_and(|ip| net.contains(&ip.to_canonical())),
            HostPattern::Name(n) => n.eq_ignore_ascii_case(host),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: String,
    credentials: Vec<String>,
    clients: Vec<IpNet>,
    any_app: bool,
    apps: Vec<String>,
    hosts: Vec<HostPattern>,
}

/// The policy, checked and ready to evaluate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    default: DefaultRule,
    rules: Vec<Rule>,
}

/// Who asks to register: the connection's address, the credential's name (if any), and a test
/// of whether its client certificate is valid for a name or address.
pub struct Requester<'a> {
    pub addr: IpAddr,
    pub credential: Option<&'a str>,
    pub cert_names: Option<&'a dyn Fn(&str) -> bool>,
}

impl Requester<'_> {
    /// Whether `host` is the requester's own: its source address, or a name or address its
    /// certificate names. An address that means "this machine" or nothing in particular
    /// (loopback, unspecified, link-local, multicast) is never anyone's own: registered, it
    /// would send every LB's traffic to the LB itself (its API, its stats port). Only an
    /// explicit `[[registration.allow]]` host rule lets those in.
    fn owns(&self, host: &str) -> bool {
        if !routable_host(host) {
            return false;
        }
        let same_ip = host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == self.addr.to_canonical());
        same_ip || self.cert_names.is_some_and(|names| names(host))
    }
}

/// Whether `host` (an address or a name) can be another machine's: not `localhost` and not an
/// address [`routable`] refuses.
fn routable_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => routable(ip.to_canonical()),
        Err(_) => {
            let h = host.to_ascii_lowercase();
            h != "localhost" && !h.ends_with(".localhost")
        }
    }
}

/// Whether `ip` can be another machine's address: not loopback, unspecified, link-local or
/// multicast.
fn routable(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Why a registration was refused, and the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (rule: {})", self.reason, self.rule)
    }
}

impl Policy {
    /// Checks the rules; `credential_names` are the names of the configured tokens and
    /// certificate mappings a rule may refer to.
    pub fn new(cfg: &RegistrationConfig, credential_names: &[&str]) -> Result<Policy, String> {
        let mut rules = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for r in &cfg.rules {
            let key = format!("registration.allow {:?}", r.name);
            if r.name.is_empty() || !names.insert(r.name.clone()) {
                return Err(format!(
                    "registration.allow: every rule needs a name of its own ({:?})",
                    r.name
                ));
            }
            if r.credentials.is_empty() && r.clients.is_empty() {
                return Err(format!(
                    "{key}: needs credentials (token or certificate names) or clients (networks) to apply to"
                ));
            }
            for c in &r.credentials {
                if !credential_names.contains(&c.as_str()) {
                    return Err(format!(
                        "{key}: credentials names {c:?}, which no [[auth.token]] or [[auth.client_cert]] defines"
                    ));
                }
            }
            if r.apps.is_empty() {
                return Err(format!("{key}: apps must list app names, or \"*\" for any"));
            }
            for a in &r.apps {
                if a != "*" {
                    crate::model::validate_name("app", a)
                        .map_err(|e| format!("{key}: apps: {e}"))?;
                }
            }
            let hosts = r
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h).map_err(|e| format!("{key}: hosts {h:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(Rule {
                name: r.name.clone(),
                credentials: r.credentials.clone(),
                clients: r.clients.clone(),
                any_app: r.apps.iter().any(|a| a == "*"),
                apps: r.apps.clone(),
                hosts,
            });
        }
        Ok(Policy {
            default: cfg.default,
            rules,
        })
    }

    /// Whether `who` may register (or deregister) `host` as a server of `app`.
    pub fn check(&self, who: &Requester<'_>, app: &str, host: &str) -> Result<(), Refusal> {
        let addr = who.addr.to_canonical();
        let covering: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| {
                who.credential
                    .is_some_and(|c| r.credentials.iter().any(|x| x == c))
                    || r.clients.iter().any(|n| n.contains(&addr))
            })
            .collect();
        if covering.is_empty() {
            return match self.default {
                DefaultRule::Any => Ok(()),
                DefaultRule::Deny => Err(Refusal {
                    rule: self.default.key().into(),
                    reason: format!("no registration rule covers this client ({addr})"),
                }),
                DefaultRule::OwnAddress if who.owns(host) => Ok(()),
                DefaultRule::OwnAddress if !routable_host(host) => Err(Refusal {
                    rule: self.default.key().into(),
                    reason: format!(
                        "{host} means the LB itself (loopback, link-local or unspecified), which is no client's own address: registered, every LB would send the app's traffic to itself; a [[registration.allow]] hosts rule can allow it"
                    ),
                }),
                DefaultRule::OwnAddress => Err(Refusal {
                    rule: self.default.key().into(),
                    reason: format!(
                        "a client may only register its own address ({addr}){}, not {host}",
                        if who.cert_names.is_some() {
                            " or a name its certificate is valid for"
                        } else {
                            ""
                        }
                    ),
                }),
            };
        }
        let names = covering
            .iter()
            .map(|r| format!("{:?}", r.name))
            .collect::<Vec<_>>()
            .join(", ");
        let for_app: Vec<&&Rule> = covering
            .iter()
            .filter(|r| r.any_app || r.apps.iter().any(|a| a == app))
            .collect();
        if for_app.is_empty() {
            return Err(Refusal {
                rule: format!("registration.allow {names}"),
                reason: format!("app {app} is not among the apps these rules allow this client"),
            });
        }
        if who.owns(host)
            || for_app
                .iter()
                .any(|r| r.hosts.iter().any(|h| h.matches(host)))
        {
            return Ok(());
        }
        Err(Refusal {
            rule: format!("registration.allow {names}"),
            reason: format!(
                "host {host} is neither this client's own address ({addr}) nor among the hosts these rules allow for {app}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(toml_text: &str, creds: &[&str]) -> Policy {
        let cfg: RegistrationConfig = toml::from_str(toml_text).unwrap();
        Policy::new(&cfg, creds).unwrap()
    }

    fn from(addr: &str) -> Requester<'static> {
        Requester {
            addr: addr.parse().unwrap(),
            credential: None,
            cert_names: None,
        }
    }

    #[test]
    fn by_default_a_client_registers_its_own_address_only() {
        let p = Policy::default();
        assert!(p.check(&from("10.0.1.5"), "web", "10.0.1.5").is_ok());
        let r = p.check(&from("10.0.1.5"), "web", "10.0.1.6").unwrap_err();
        assert_eq!(r.rule, "registration.default = \"own-address\"");
        assert!(
            r.reason.contains("10.0.1.5") && r.reason.contains("10.0.1.6"),
            "{r}"
        );
        // An IPv4 client seen on an IPv6 socket is the same client.
        assert!(p.check(&from("::ffff:10.0.1.5"), "web", "10.0.1.5").is_ok());
        assert!(p
            .check(&from("10.0.1.5"), "web", "app1.example.com")
            .is_err());
    }

    #[test]
    fn loopback_link_local_and_unspecified_are_nobodys_own_address() {
        let p = Policy::default();
        for (client, host) in [
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("169.254.1.1", "169.254.1.1"),
            ("fe80::1", "fe80::1"),
            ("10.0.1.5", "localhost"),
            ("10.0.1.5", "0.0.0.0"),
        ] {
            assert!(
                p.check(&from(client), "web", host).is_err(),
                "{client} registering {host}"
            );
        }
        // A certificate naming localhost does not make it anyone's either.
        let names = |h: &str| h == "localhost" || h == "127.0.0.1";
        let who = Requester {
            addr: "10.0.1.5".parse().unwrap(),
            credential: None,
            cert_names: Some(&names),
        };
        assert!(p.check(&who, "web", "localhost").is_err());
        assert!(p.check(&who, "web", "127.0.0.1").is_err());
        // An explicit host rule can still allow them (a node's own health checker, say).
        let p = policy(
            "[[allow]]\nname = \"local\"\nclients = [\"127.0.0.0/8\"]\napps = [\"web\"]\nhosts = [\"127.0.0.1/32\"]",
            &[],
        );
        assert!(p.check(&from("127.0.0.1"), "web", "127.0.0.1").is_ok());
    }

    #[test]
    fn a_certificate_vouches_for_the_names_it_is_valid_for() {
        let p = Policy::default();
        let valid = |h: &str| h == "app1.example.com" || h == "10.0.9.9";
        let who = Requester {
            addr: "10.0.1.5".parse().unwrap(),
            credential: Some("apps"),
            cert_names: Some(&valid),
        };
        assert!(p.check(&who, "web", "app1.example.com").is_ok());
        assert!(p.check(&who, "web", "10.0.9.9").is_ok());
        assert!(p.check(&who, "web", "10.0.1.5").is_ok());
        assert!(p.check(&who, "web", "app2.example.com").is_err());
    }

    #[test]
    fn rules_grant_chosen_clients_more_and_name_themselves_when_they_refuse() {
        let p = policy(
            r#"
            [[allow]]
            name = "deployer"
            credentials = ["deploy"]
            apps = ["web", "api"]
            hosts = ["10.0.1.0/24", "db.internal"]

            [[allow]]
            name = "legacy-nat"
            clients = ["192.168.7.0/24"]
            apps = ["*"]
            hosts = ["*"]
            "#,
            &["deploy"],
        );
        let deploy = Requester {
            addr: "10.9.9.9".parse().unwrap(),
            credential: Some("deploy"),
            cert_names: None,
        };
        assert!(p.check(&deploy, "web", "10.0.1.20").is_ok());
        assert!(p.check(&deploy, "api", "db.internal").is_ok());
        assert!(
            p.check(&deploy, "web", "10.9.9.9").is_ok(),
            "its own address too"
        );
        let r = p.check(&deploy, "billing", "10.0.1.20").unwrap_err();
        assert_eq!(r.rule, "registration.allow \"deployer\"");
        assert!(r.reason.contains("app billing"), "{r}");
        let r = p.check(&deploy, "web", "10.0.2.1").unwrap_err();
        assert!(r.reason.contains("host 10.0.2.1"), "{r}");
        assert!(p
            .check(&from("192.168.7.40"), "anything", "8.8.8.8")
            .is_ok());
        // Clients no rule covers fall back to the default.
        assert!(p.check(&from("10.0.3.3"), "web", "10.0.3.3").is_ok());
        assert!(p.check(&from("10.0.3.3"), "web", "10.0.1.20").is_err());
    }

    #[test]
    fn the_default_can_deny_or_allow_everything() {
        let deny = policy("default = \"deny\"", &[]);
        let r = deny
            .check(&from("10.0.1.5"), "web", "10.0.1.5")
            .unwrap_err();
        assert_eq!(r.rule, "registration.default = \"deny\"");
        let any = policy("default = \"any\"", &[]);
        assert!(any.check(&from("10.0.1.5"), "web", "10.0.7.7").is_ok());
    }

    #[test]
    fn bad_rules_are_config_errors_naming_the_rule() {
        let bad = |t: &str| {
            let cfg: RegistrationConfig = toml::from_str(t).unwrap();
            Policy::new(&cfg, &["deploy"]).unwrap_err()
        };
        let e = bad("[[allow]]\nname = \"r\"\napps = [\"web\"]");
        assert!(e.contains("\"r\"") && e.contains("credentials"), "{e}");
        let e = bad("[[allow]]\nname = \"r\"\ncredentials = [\"nobody\"]\napps = [\"web\"]");
        assert!(e.contains("nobody"), "{e}");
        let e = bad("[[allow]]\nname = \"r\"\nclients = [\"10.0.0.0/8\"]\napps = [\"w b\"]");
        assert!(e.contains("apps"), "{e}");
        let e = bad("[[allow]]\nname = \"r\"\nclients = [\"10.0.0.0/8\"]\napps = [\"w\"]\nhosts = [\"2130706433\"]");
        assert!(e.contains("hosts"), "{e}");
    }

    proptest! {
        /// With no rules, a registration is allowed exactly when the host is the client's own
        /// address and that address can be another machine's (not loopback and the like).
        #[test]
        fn own_address_default_allows_exactly_the_own_address(a in any::<u32>(), b in any::<u32>()) {
            let client = std::net::Ipv4Addr::from(a);
            let host = std::net::Ipv4Addr::from(b).to_string();
            let who = Requester { addr: IpAddr::V4(client), credential: None, cert_names: None };
            let ok = Policy::default().check(&who, "web", &host).is_ok();
            prop_assert_eq!(ok, client.to_string() == host && routable(IpAddr::V4(client)));
        }

        /// A rule that covers a client decides which apps it may register; for those apps its
        /// own (routable) address always stays allowed, and for the others nothing is.
        #[test]
        fn covering_rules_never_take_the_own_address_away(a in any::<u32>(), apps in proptest::sample::subsequence(vec!["web", "api", "*"], 1..3)) {
            let client = std::net::Ipv4Addr::from(a);
            let cfg = RegistrationConfig {
                default: DefaultRule::OwnAddress,
                rules: vec![RuleConfig {
                    name: "r".into(),
                    credentials: vec![],
                    clients: vec!["0.0.0.0/0".parse().unwrap()],
                    apps: apps.iter().map(|s| s.to_string()).collect(),
                    hosts: vec![],
                }],
            };
            let p = Policy::new(&cfg, &[]).unwrap();
            let who = Requester { addr: IpAddr::V4(client), credential: None, cert_names: None };
            for app in ["web", "api"] {
                let allowed_app = apps.contains(&"*") || apps.contains(&app);
                let own = routable(IpAddr::V4(client));
                prop_assert_eq!(p.check(&who, app, &client.to_string()).is_ok(), allowed_app && own);
            }
        }
    }
}
