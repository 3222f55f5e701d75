//! The TLS, SASL and HTTP-auth keys: what they resolve to, and the problems they report.

use super::*;

fn testdata(name: &str) -> String {
    format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
}

const CLUSTER: &str = "[[cluster]]\nname = \"c\"\nprimary = \"mysql://u@db1:3306\"\n\
                       replicas = [\"mysql://u@db2:3306\"]\n";

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env
        .iter()
        .chain(&[("MILLILAG_DB_PASSWORD", "db-pw")])
        .map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml_with_env(text, "test.toml", env)
}

fn problems(text: &str, env: &[(&str, &str)]) -> String {
    load(text, env)
        .expect_err("config must be rejected")
        .to_string()
}

#[test]
fn cluster_tls_reaches_the_primary_and_every_replica() {
    let text = format!(
        "{CLUSTER}tls = \"verify-identity\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        testdata("ca.pem"),
        testdata("client.pem"),
        testdata("client.key")
    );
    let c = load(&text, &[]).unwrap();
    let cl = &c.clusters[0];
    assert_eq!(cl.tls, TlsMode::VerifyIdentity);
    for url in [cl.primary(), &cl.replicas[0]] {
        assert_eq!(url.tls().mode, TlsMode::VerifyIdentity);
        assert_eq!(url.tls().key, "cluster[0]");
        let opts = url.opts(None);
        let ssl = opts.ssl_opts().expect("TLS on");
        assert!(ssl.client_identity().is_some());
        assert!(
            ssl.disable_built_in_roots(),
            "a private CA replaces the web roots"
        );
        assert!(!ssl.accept_invalid_certs());
    }
    // Discovered replicas are derived from the primary: secured the same way.
    assert!(cl
        .primary()
        .with_address("db9", 3306)
        .opts(None)
        .ssl_opts()
        .is_some());

    let c = load(&format!("{CLUSTER}tls = \"require\"\n"), &[]).unwrap();
    let opts = c.clusters[0].primary().opts(None);
    assert!(opts.ssl_opts().unwrap().accept_invalid_certs());
    let c = load(CLUSTER, &[]).unwrap();
    assert!(
        c.clusters[0].primary().opts(None).ssl_opts().is_none(),
        "off by default"
    );
}

#[test]
fn cluster_tls_problems_name_their_keys() {
    let e = problems(&format!("{CLUSTER}tls = \"verify_full\"\n"), &[]);
    assert!(e.contains("verify-identity") && e.contains("tls"), "{e}");
    let e = problems(
        &format!("{CLUSTER}tls_ca_file = \"{}\"\n", testdata("ca.pem")),
        &[],
    );
    assert!(
        e.contains("cluster[0].tls_ca_file is set but cluster[0].tls = \"off\""),
        "{e}"
    );
    let e = problems(
        &format!("{CLUSTER}tls = \"verify-ca\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n"),
        &[],
    );
    assert!(
        e.contains("cluster[0].tls_ca_file: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let e = problems(
        &format!(
            "{CLUSTER}tls = \"verify-ca\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\n",
            testdata("ca.pem"),
            testdata("client.pem")
        ),
        &[],
    );
    assert!(
        e.contains("cluster[0].tls_cert_file is set without tls_key_file"),
        "{e}"
    );
    let e = problems(
        &format!(
            "{CLUSTER}tls = \"verify-ca\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            testdata("client.pem"),
            testdata("ca.pem")
        ),
        &[],
    );
    assert!(
        e.contains("cluster[0].tls_key_file") && e.contains("no PEM private key"),
        "{e}"
    );
}

const SCRAM: &str = "[kafka]\nsasl_password_env = \"KPW\"\n[kafka.properties]\n\
                     \"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
                     \"sasl.username\" = \"mon\"\n";

#[test]
fn kafka_sasl_password_comes_from_env_or_file() {
    let c = load(SCRAM, &[("KPW", "s3cret")]).unwrap();
    assert_eq!(c.kafka.librdkafka_properties()["sasl.password"], "s3cret");
    assert!(!c.kafka.properties.contains_key("sasl.password"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "from-file\n").unwrap();
    let text = SCRAM.replace(
        "sasl_password_env = \"KPW\"",
        &format!(
            "sasl_password_file = \"{}\"\nssl_key_password_env = \"KEYPW\"",
            f.display()
        ),
    );
    let c = load(&text, &[("KEYPW", "key-pw")]).unwrap();
    let props = c.kafka.librdkafka_properties();
    assert_eq!(props["sasl.password"], "from-file");
    assert_eq!(props["ssl.key.password"], "key-pw");
    let e = problems(SCRAM, &[]);
    assert!(
        e.contains("kafka.sasl_password_env: environment variable KPW is not set"),
        "{e}"
    );
}

#[test]
fn kafka_problems_name_their_keys() {
    let e = problems(
        &format!("{SCRAM}\"sasl.password\" = \"in-the-file\"\n"),
        &[("KPW", "x")],
    );
    assert!(
        e.contains(
            "kafka.properties.\"sasl.password\": a password does not belong in the config file"
        ),
        "{e}"
    );
    assert!(!e.contains("in-the-file"), "{e}");
    let e = problems(&SCRAM.replace("SCRAM-SHA-512", "GSSAPI"), &[("KPW", "x")]);
    assert!(e.contains("GSSAPI/Kerberos is not compiled in"), "{e}");
    let e = problems(
        &SCRAM.replace("\"sasl.username\" = \"mon\"\n", ""),
        &[("KPW", "x")],
    );
    assert!(e.contains("kafka.properties.\"sasl.username\""), "{e}");
    let e = problems(
        "[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"\n",
        &[],
    );
    assert!(
        e.contains("kafka.properties.\"ssl.ca.location\": cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let e = problems(
        "[kafka]\nsasl_password_env = \"KPW\"\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n",
        &[("KPW", "x")],
    );
    assert!(e.contains("but security.protocol is \"ssl\""), "{e}");
    let e = problems("[kafka.properties]\n\"security.protocol\" = \"tls\"\n", &[]);
    assert!(e.contains("must be one of plaintext, ssl"), "{e}");
}

#[test]
fn http_tls_and_auth_keys() {
    let text = format!(
        "[[sink.influxdb]]\nurl = \"https://vm:8428\"\napi = \"v1\"\ndatabase = \"d\"\n\
         token_env = \"TOK\"\ntls_ca_file = \"{ca}\"\n\
         [[sink.influxdb]]\nurl = \"https://vm:8428\"\napi = \"v1\"\ndatabase = \"d\"\n\
         username = \"u\"\ntoken_env = \"TOK\"\n\
         [[webhook]]\nurl = \"https://hooks.example/x\"\ntls_ca_file = \"{ca}\"\n\
         username = \"am\"\npassword_env = \"WPW\"\n\
         [[webhook]]\nurl = \"https://hooks.example/y\"\nbearer_token_env = \"BEARER\"\n",
        ca = testdata("ca.pem")
    );
    let c = load(&text, &[("TOK", "t0k"), ("WPW", "pw"), ("BEARER", "b34")]).unwrap();
    let bearer = |t: &str| HttpAuth::Bearer {
        token: crate::secret::Sensitive::new(t),
    };
    let basic = |u: &str, p: &str| HttpAuth::Basic {
        username: u.into(),
        password: crate::secret::Sensitive::new(p),
    };
    assert_eq!(c.sink.influxdb[0].auth, Some(bearer("t0k")));
    assert_eq!(c.sink.influxdb[1].auth, Some(basic("u", "t0k")));
    assert_eq!(c.webhooks[0].auth, Some(basic("am", "pw")));
    assert_eq!(c.webhooks[1].auth, Some(bearer("b34")));
    let printed = c.to_masked_toml();
    for secret in ["t0k", "b34", "= \"pw\""] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
    }

    let e = problems(
        "[[webhook]]\nurl = \"http://h/x\"\ntls_ca_file = \"/nonexistent.pem\"\nusername = \"u\"\n\
         [[webhook]]\nurl = \"https://h/x\"\npassword_env = \"P\"\nbearer_token_env = \"B\"\n",
        &[("P", "p"), ("B", "b")],
    );
    for needle in [
        "webhook[0].tls_ca_file is set but webhook[0].url (http://h/x) is not https://",
        "webhook[0].tls_ca_file: cannot read /nonexistent.pem",
        "webhook[0].username is set without password_env or password_file",
        "webhook[1].password_env/password_file is set without webhook[1].username",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
    let e = problems("[[webhook]]\nurl = \"ftp://h/x\"\n", &[]);
    assert!(e.contains("must start with http:// or https://"), "{e}");
}
