//! Layering, validation and topology of the configuration.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.toml");
    std::fs::write(&path, toml).unwrap();
    RawConfig::load_with_env(Some(&path), env(vars))?.validate()
}

#[test]
fn defaults_validate() {
    let s = RawConfig::load_with_env(None, env(&[]))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.server.listen.port(), 7700);
    assert!(matches!(s.storage, StorageSettings::Rocks(_)));
}

#[test]
fn file_then_env() {
    let s = load(
        "[server]\nlisten = \"127.0.0.1:1234\"\n[limits]\nmax_page = 5\n",
        &[("MINDOO_REPLICA__LIMITS__MAX_PAGE", "7")],
    )
    .unwrap();
    assert_eq!(s.server.listen.port(), 1234);
    assert_eq!(s.limits.max_page, 7);
}

#[test]
fn lists_from_the_environment() {
    let s = load(
        "",
        &[
            ("MINDOO_REPLICA__REPLICATION__PEERS", "a:1,b:2"),
            ("MINDOO_REPLICA__REPLICATION__NAMESPACES", "t/d"),
            ("MINDOO_REPLICA__AUTH__CLIENTS", "off"),
            (
                "MINDOO_REPLICA__AUTH__WRITERS",
                &format!("*,{}", "ab".repeat(32)),
            ),
        ],
    )
    .unwrap();
    assert!(s.auth.access.default.writers.any);
    assert_eq!(s.auth.access.default.writers.keys.len(), 1);
    assert_eq!(s.replication.peers, ["a:1", "b:2"]);
    assert_eq!(s.replication.pull.namespaces.len(), 1);
}

#[test]
fn errors_name_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[server]\nlisten = \"nowhere\"\n", &[], "server.listen"),
        ("[storage]\nbackend = \"floppy\"\n", &[], "storage.backend"),
        ("[limits]\nmax_page = 0\n", &[], "limits.max_page"),
        ("[server]\nlisten = \n", &[], "replica.toml"),
        ("[server]\nlisen = \"x\"\n", &[], "lisen"),
        (
            "",
            &[("MINDOO_REPLICA__LIMITS__MAX_PAGE", "lots")],
            "max_page",
        ),
        (
            "[[policy.namespaces]]\ntenant = \"a\"\ndb = \"b\"\ntrusted_authors = [\"zz\"]\n",
            &[],
            "policy.namespaces[0].trusted_authors",
        ),
        ("[log]\nformat = \"xml\"\n", &[], "log.format"),
        ("[limits]\nmax_page = 100000\n", &[], "limits.max_page"),
        (
            "[replication]\nrelay_delay_ms = 1001\n",
            &[],
            "replication.relay_delay_ms",
        ),
        (
            "[storage]\nlog_tail_mb = 2000\n",
            &[],
            "storage.log_tail_mb",
        ),
        (
            "[limits]\nmax_send_data_per_address_mb = 4\n",
            &[],
            "limits.max_send_data_per_address_mb",
        ),
        (
            "[limits]\nmax_send_data_per_connection_mb = 0\n",
            &[],
            "limits.max_send_data_per_connection_mb",
        ),
        (
            "[limits]\nmax_send_data_mb = 8\n",
            &[],
            "limits.max_send_data_mb",
        ),
        (
            "[limits]\nclient_requests_per_second = 0\n",
            &[],
            "limits.client_requests_per_second",
        ),
        (
            "[limits]\nmax_calls_per_client = 0\n",
            &[],
            "limits.max_calls_per_client",
        ),
        (
            "[limits]\nmax_entry_bytes = 4194304\nmax_message_bytes = 8388608\nmax_send_data_per_connection_mb = 8\nmax_send_data_per_address_mb = 16\nmax_send_data_per_client_mb = 2\n",
            &[],
            "limits.max_send_data_per_client_mb",
        ),
        (
            "[[quotas.tenants]]\ntenant = \"a\"\nmax_entries = 1\n[[quotas.tenants]]\ntenant = \"a\"\n",
            &[],
            "quotas.tenants[1]",
        ),
        (
            "[[quotas.tenants]]\ntenant = \"\"\n",
            &[],
            "quotas.tenants[0]",
        ),
        (
            "[server]\nheader_timeout_ms = 10\n",
            &[],
            "server.header_timeout_ms",
        ),
        (
            "[server]\nsend_timeout_ms = 0\n",
            &[],
            "server.send_timeout_ms",
        ),
        (
            "[server]\nmax_connections_per_address = 0\n",
            &[],
            "server.max_connections_per_address",
        ),
    ];
    for (toml, vars, key) in cases {
        let err = load(toml, vars).unwrap_err().to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
}

fn raw(peers: &[&str]) -> RawReplication {
    RawReplication {
        peers: peers.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn listen() -> SocketAddr {
    "127.0.0.1:7700".parse().unwrap()
}

#[test]
fn full_mesh_from_one_list_drops_self() {
    let mut r = raw(&["a:1", "b:1", "http://c:1"]);
    r.advertise = "b:1".into();
    let s = validate_replication(&r, listen()).unwrap();
    assert_eq!(s.peers, ["a:1", "c:1"]);
}

#[test]
fn hub_and_spoke() {
    let mut r = raw(&["hub:1", "s1:1", "s2:1"]);
    r.hubs = vec!["hub:1".into()];
    r.advertise = "s1:1".into();
    let spoke = validate_replication(&r, listen()).unwrap();
    assert_eq!(spoke.peers, ["hub:1"]);
    r.advertise = "hub:1".into();
    let hub = validate_replication(&r, listen()).unwrap();
    assert_eq!(hub.peers, ["s1:1", "s2:1"]);
}

#[test]
fn bad_topologies_name_the_key() {
    let cases = [
        (raw(&["a:1", "a:1"]), "replication.peers[1]", "listed twice"),
        (
            raw(&["127.0.0.1:7700"]),
            "replication.peers[0]",
            "own server.listen",
        ),
        (raw(&["nohost"]), "replication.peers[0]", "not host:port"),
        (raw(&["a:0"]), "replication.peers[0]", "not host:port"),
        (
            RawReplication {
                namespaces: vec!["x".into()],
                ..Default::default()
            },
            "replication.namespaces[0]",
            "tenant/db",
        ),
        (
            RawReplication {
                hubs: vec!["h:1".into()],
                ..Default::default()
            },
            "replication.advertise",
            "hub",
        ),
    ];
    for (r, key, why) in cases {
        let err = validate_replication(&r, listen()).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(why), "{err}");
    }
}

/// A config file mangled in any way is a clear error (or, when it still
/// parses, values that are checked), never a panic.
#[test]
fn a_mangled_config_file_is_an_error_never_a_panic() {
    let mut full = RawConfig::default();
    full.replication.peers = vec!["replica-0.mesh:7700".into(), "replica-1.mesh:7700".into()];
    full.policy.namespaces = vec![RawNamespace {
        tenant: "acme".into(),
        db: "notes".into(),
        trusted_authors: vec!["ab".repeat(32)],
        require_signature: Some(true),
    }];
    let text = full.to_toml();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.toml");
    let (mut refused, mut checked) = (0, 0);
    for m in crate::fixtures::mutations(text.as_bytes(), 7, 1500) {
        std::fs::write(&path, &m).unwrap();
        match RawConfig::load_with_env(Some(&path), env(&[])).and_then(|raw| raw.validate()) {
            Ok(_) => checked += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && checked > 0,
        "{refused} refused, {checked} valid"
    );
}
