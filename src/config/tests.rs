//! Config resolution and validation: defaults, overrides, and errors that name the key.
use super::*;

fn load(toml_text: &str, o: Overrides) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(toml_text).map_err(|e| ConfigError::Parse {
        path: "test".into(),
        message: e.to_string(),
    })?;
    Config::resolve(file, o)
}

#[test]
fn defaults_make_a_working_single_node() {
    let c = load("", Overrides::default()).unwrap();
    assert_eq!(c.api_listen.port(), 1729);
    assert_eq!(c.gossip_listen.port(), 1730);
    assert_eq!(c.default_ttl, Duration::from_secs(4));
    assert_eq!(c.gossip_advertise.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn a_node_with_peers_names_its_cluster_and_its_private_gossip_address() {
    // A lone node keeps gossip on loopback.
    let c = load("", Overrides::default()).unwrap();
    assert_eq!(c.gossip_listen, SocketAddr::from(([127, 0, 0, 1], 1730)));
    let err = load(
        "seeds = [\"10.0.0.2:1730\"]\ngossip_listen = \"10.0.0.1:1730\"",
        Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("invalid cluster_id"), "{err}");
    let err = load(
        "cluster_id = \"prod\"\nseeds = [\"10.0.0.2:1730\"]",
        Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("invalid gossip_listen"),
        "{err}"
    );
    let c = load(
        "cluster_id = \"prod\"\nseeds = [\"10.0.0.2:1730\"]\ngossip_listen = \"10.0.0.1:1730\"",
        Overrides::default(),
    )
    .unwrap();
    assert!(c.cluster_id_set);
}

/// The packaged config is valid as shipped, and so is every commented-out example in it
/// (but the alternative `reload`/`vars` lines, of which only one may be active).
#[test]
fn the_packaged_config_and_its_commented_examples_are_valid() {
    let text = include_str!("../../packaging/bender.toml");
    let c = load(text, Overrides::default()).unwrap();
    assert_eq!(c.auth.tokens.len(), 2);
    assert!(c.seeds.is_empty() && c.gossip_listen.ip().is_loopback());
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if (rest.starts_with('[') || rest.split(" = ").count() > 1)
                    && !rest.starts_with("reload")
                    && !rest.starts_with("vars")
                    && !rest.starts_with(' ') =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c =
        load(&uncommented, Overrides::default()).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(c.cluster_id, "prod");
    assert_eq!(c.auth.tokens.len(), 3);
    assert_eq!(c.auth.client_certs.len(), 1);
    assert_eq!(c.registration.rules.len(), 1);
    assert_eq!(c.compat.unauthenticated_register_from.len(), 1);
    assert!(c.api.tls.is_some() && !c.auth.open_read_from.is_empty());
}

#[test]
fn flags_override_the_file() {
    let o = Overrides {
        default_ttl: Some(Duration::from_millis(500)),
        node_id: Some("n1".into()),
        ..Default::default()
    };
    let c = load("default_ttl = \"10s\"\nnode_id = \"file\"", o).unwrap();
    assert_eq!(c.default_ttl, Duration::from_millis(500));
    assert_eq!(c.node_id, "n1");
}

#[test]
fn errors_name_the_key() {
    let err = load("default_ttl = \"2h\"", Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("default_ttl"), "{err}");
    let err = load("nonsense = 1", Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("nonsense"), "{err}");
    let err = load("default_ttl = \"soon\"", Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("default_ttl"), "{err}");
    let err = load("node_id = \"a b\"", Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("node_id"), "{err}");
    let err = load("seeds = [\"nope\"]", Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("seeds"), "{err}");
    let err = load(
        "cluster_id = \"prod\"\nseeds = [\"10.0.0.2:1730\"]\ngossip_listen = \"10.0.0.1:1730\"\ngossip_allow = [\"192.168.0.0/16\"]",
        Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("gossip_allow"), "{err}");
}

#[test]
fn a_top_level_key_appended_after_a_table_is_named_with_the_table_it_landed_in() {
    let text = format!(
        "{}\nnode_id = \"lb1\"\n",
        include_str!("../../packaging/bender.toml")
    );
    let e = toml::from_str::<FileConfig>(&text).unwrap_err();
    let message = describe_toml_error(&text, &e);
    assert!(message.contains("unknown field `node_id`"), "{message}");
    assert!(
        message.contains("top-level key, but it sits inside the [[template]] table"),
        "{message}"
    );
    // A key no table and no top level knows is only unknown.
    let text = "[api]\nno_such_key = 1\n";
    let e = toml::from_str::<FileConfig>(text).unwrap_err();
    assert!(!describe_toml_error(text, &e).contains("top-level"));
}
