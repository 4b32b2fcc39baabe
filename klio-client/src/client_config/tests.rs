use std::collections::HashMap;

use super::test_pki::Pki;
use super::*;
use crate::server_link::TlsFile;

fn env(vars: &[(&str, &str)]) -> ClientSettings {
    let vars: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
        .collect();
    ClientSettings::from_env(|name| vars.get(name).cloned())
}

/// The identity error inside `e`, if it is one.
fn identity(e: &ClientConfigError) -> Option<&IdentityError> {
    match e {
        ClientConfigError::Identity(e) => Some(e),
        _ => None,
    }
}

fn no_env() -> ClientSettings {
    ClientSettings::default()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("klio-config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_win_over_variables_which_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "client:\n  cluster_name: from-file\n  wal:\n    address: file:1\n    \
         server_name: file.example\n    server_cert_path: /file/ca.pem\n    \
         client_cert_path: /file/c.pem\n    client_key_path: /file/c.key\n",
    );
    let merged = ClientSettings::merge(
        Some(&file),
        env(&[
            ("KLIO_SERVER", "env:2"),
            ("KLIO_TLS_CERT", "/env/c.pem"),
            ("KLIO_CLUSTER", "from-env"),
            // Empty counts as unset, as for clap's variables.
            ("KLIO_SERVER_NAME", ""),
        ]),
        ClientSettings {
            address: Some("flag:3".into()),
            ..ClientSettings::default()
        },
    )
    .unwrap();
    assert_eq!(
        merged,
        ClientSettings {
            address: Some("flag:3".into()),
            server_name: Some("file.example".into()),
            ca: Some("/file/ca.pem".into()),
            cert: Some("/env/c.pem".into()),
            key: Some("/file/c.key".into()),
            cluster: Some("from-env".into()),
        }
    );
}

#[test]
fn every_variable_is_read() {
    let s = env(&[
        ("KLIO_SERVER", "a:1"),
        ("KLIO_SERVER_NAME", "n"),
        ("KLIO_TLS_CA", "ca"),
        ("KLIO_TLS_CERT", "c"),
        ("KLIO_TLS_KEY", "k"),
        ("KLIO_CLUSTER", "x"),
    ]);
    assert_eq!(
        s,
        ClientSettings {
            address: Some("a:1".into()),
            server_name: Some("n".into()),
            ca: Some("ca".into()),
            cert: Some("c".into()),
            key: Some("k".into()),
            cluster: Some("x".into()),
        }
    );
}

#[test]
fn a_valid_configuration_resolves_to_its_endpoint_and_cluster() {
    let pki = Pki::new("main");
    pki.client("pg1");
    let c = ClientConfig::resolve(None, no_env(), pki.flags("pg1")).unwrap();
    assert_eq!(c.server.address, "localhost:7470");
    assert_eq!(c.server.cert, pki.path("client-pg1.pem"));
    assert_eq!(c.cluster().unwrap().as_str(), "pg1");
    let args: Vec<String> = c
        .to_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(args[..2], ["--server", "localhost:7470"]);
    assert!(args.ends_with(&["--cluster".to_owned(), "pg1".to_owned()]));
}

#[test]
fn a_missing_setting_names_its_key_variable_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "client:\n  cluster_name: pg1\n");
    let e = ClientConfig::resolve(Some(&file), no_env(), ClientSettings::default()).unwrap_err();
    assert!(
        matches!(e, ClientConfigError::Missing(Setting::ADDRESS)),
        "{e}"
    );
    let text = e.to_string();
    for part in ["client.wal.address", "KLIO_SERVER", "--server"] {
        assert!(text.contains(part), "{text}");
    }
    let only_address = ClientSettings {
        address: Some("a:1".into()),
        ..ClientSettings::default()
    };
    let e = ClientConfig::resolve(None, no_env(), only_address).unwrap_err();
    assert!(matches!(e, ClientConfigError::Missing(Setting::CA)), "{e}");
    assert!(e.to_string().contains("client.wal.server_cert_path"), "{e}");
}

#[test]
fn a_missing_cluster_is_an_error_only_where_one_is_needed() {
    let pki = Pki::new("main");
    pki.client("pg1");
    let c = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            cluster: None,
            ..pki.flags("pg1")
        },
    )
    .unwrap();
    let e = c.cluster().unwrap_err();
    assert!(
        matches!(e, ClientConfigError::Missing(Setting::CLUSTER)),
        "{e}"
    );
    assert!(
        e.to_string().contains("KLIO_CLUSTER") && e.to_string().contains("--cluster"),
        "{e}"
    );
}

#[test]
fn a_mistyped_certificate_path_is_named() {
    let pki = Pki::new("main");
    pki.client("pg1");
    let typo = pki.path("client-pg1.pen");
    let e = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            cert: Some(typo.clone()),
            ..pki.flags("pg1")
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            identity(&e),
            Some(IdentityError::Unreadable {
                file: TlsFile::ClientCert,
                path,
                ..
            }) if *path == typo
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&typo.display().to_string()), "{e}");
}

#[test]
fn an_unreadable_ca_or_key_is_named() {
    let pki = Pki::new("main");
    pki.client("pg1");
    for (flags, file) in [
        (
            ClientSettings {
                ca: Some(pki.path("nope.pem")),
                ..pki.flags("pg1")
            },
            TlsFile::Ca,
        ),
        (
            ClientSettings {
                key: Some(pki.path("nope.key")),
                ..pki.flags("pg1")
            },
            TlsFile::ClientKey,
        ),
    ] {
        let e = ClientConfig::resolve(None, no_env(), flags).unwrap_err();
        assert!(
            matches!(identity(&e), Some(IdentityError::Unreadable { file: f, .. }) if *f == file),
            "{e}"
        );
    }
}

#[test]
fn a_file_that_is_not_pem_is_refused() {
    let pki = Pki::new("main");
    pki.client("pg1");
    std::fs::write(pki.path("garbage.pem"), "not a certificate\n").unwrap();
    let e = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            cert: Some(pki.path("garbage.pem")),
            ..pki.flags("pg1")
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            identity(&e),
            Some(IdentityError::Empty {
                file: TlsFile::ClientCert,
                ..
            })
        ),
        "{e}"
    );
    // A certificate given as the key.
    let e = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            key: Some(pki.path("client-pg1.pem")),
            ..pki.flags("pg1")
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            identity(&e),
            Some(IdentityError::Empty {
                file: TlsFile::ClientKey,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let pki = Pki::new("main");
    pki.client("pg1");
    pki.client("pg2");
    let e = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            key: Some(pki.path("client-pg2.key")),
            ..pki.flags("pg1")
        },
    )
    .unwrap_err();
    assert!(
        matches!(identity(&e), Some(IdentityError::KeyMismatch { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("does not belong"), "{e}");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("main");
    let other = Pki::new("other");
    other.client("pg1");
    let e = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            ca: Some(pki.path("ca.pem")),
            ..other.flags("pg1")
        },
    )
    .unwrap_err();
    assert!(
        matches!(identity(&e), Some(IdentityError::NotSignedByCa { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("not issued by the CA"), "{e}");
}

#[test]
fn a_malformed_cluster_name_is_refused() {
    let pki = Pki::new("main");
    pki.client("pg1");
    let e = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            cluster: Some("pg 1/..".into()),
            ..pki.flags("pg1")
        },
    )
    .unwrap_err();
    assert!(matches!(e, ClientConfigError::ClusterName(_)), "{e}");
}

#[test]
fn an_address_without_a_port_is_refused() {
    let pki = Pki::new("main");
    pki.client("pg1");
    for address in ["klio.example.net", "klio.example.net:http", ":7470"] {
        let e = ClientConfig::resolve(
            None,
            no_env(),
            ClientSettings {
                address: Some(address.into()),
                ..pki.flags("pg1")
            },
        )
        .unwrap_err();
        assert!(matches!(e, ClientConfigError::Address(_)), "{address}: {e}");
    }
    let c = ClientConfig::resolve(
        None,
        no_env(),
        ClientSettings {
            address: Some("[::1]:7470".into()),
            ..pki.flags("pg1")
        },
    )
    .unwrap();
    assert_eq!(c.server.address, "[::1]:7470");
}

#[test]
fn an_unreadable_configuration_file_is_named() {
    let e = ClientSettings::merge(
        Some(Path::new("/nonexistent/klio-config.yaml")),
        no_env(),
        ClientSettings::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ClientConfigError::Read { .. }), "{e}");
    assert!(
        e.to_string().contains("/nonexistent/klio-config.yaml"),
        "{e}"
    );
}
