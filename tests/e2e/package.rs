//! The Debian package and its systemd units: the units are hardened and verified by
//! `systemd-analyze`; the .deb is built by cargo-deb from the test build's binary (the release
//! build is `scripts/package`, too slow for every test run) and checked by lintian.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_millilag");
const SERVICES: [&str; 3] = ["writer", "reader", "processor"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_path(service: &str) -> PathBuf {
    root().join(format!("packaging/systemd/millilag-{service}.service"))
}

/// `section.Key` -> every value it is given (directives may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = l.split_once('=') {
            out.entry(format!("{section}.{k}"))
                .or_default()
                .push(v.to_string());
        }
    }
    out
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs it)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn systemd_units_are_hardened_run_their_service_and_pass_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    for service in SERVICES {
        let text = std::fs::read_to_string(unit_path(service)).unwrap();
        let unit = parse_unit(&text);
        let one = |k: &str| -> &str {
            match unit.get(k).map(Vec::as_slice) {
                Some([v]) => v,
                other => panic!("{service}: {k} = {other:?}"),
            }
        };
        assert_eq!(
            one("Service.ExecStart"),
            format!("/usr/bin/millilag {service} --config /etc/millilag/millilag.toml")
        );
        assert_eq!(
            one("Service.EnvironmentFile"),
            "-/etc/millilag/millilag.env"
        );
        assert_eq!(one("Service.KillSignal"), "SIGTERM");
        // A config error (exit 2) is not retried forever.
        assert_eq!(one("Service.RestartPreventExitStatus"), "2");
        assert_eq!(one("Install.WantedBy"), "multi-user.target");
        for (k, v) in [
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("RestrictNamespaces", "yes"),
            ("LockPersonality", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallArchitectures", "native"),
        ] {
            assert_eq!(one(&format!("Service.{k}")), v, "{service}: {k}");
        }
        // /proc/stat (process_start_time_seconds) must stay readable.
        assert!(!unit.contains_key("Service.ProcSubset"), "{service}");

        // systemd-analyze checks the unit as systemd would load it; the binary is this build's.
        let copy = dir.path().join(format!("millilag-{service}.service"));
        std::fs::write(&copy, text.replace("/usr/bin/millilag", BIN)).unwrap();
        let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
        let ours: Vec<&str> = out.lines().filter(|l| l.contains("millilag-")).collect();
        assert!(
            ok && ours.is_empty(),
            "systemd-analyze verify {service}: {out}"
        );
        // Exposure 0 (locked down) .. 10 (unprotected): hardened means at most 2.
        let (ok, out) = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&copy));
        assert!(ok, "systemd-analyze security {service}: {out}");
    }

    // The check above is not vacuous: a misspelt value is reported.
    let bad = dir.path().join("millilag-bad.service");
    let text = std::fs::read_to_string(unit_path("writer")).unwrap();
    std::fs::write(
        &bad,
        text.replace("/usr/bin/millilag", BIN)
            .replace("ProtectSystem=strict", "ProtectSystem=strikt"),
    )
    .unwrap();
    let (_, out) = run(Command::new("systemd-analyze").arg("verify").arg(&bad));
    assert!(
        out.contains("millilag-bad.service") && out.contains("strikt"),
        "{out}"
    );
}

#[test]
fn deb_package_holds_the_service_binary_units_and_config_and_passes_lintian() {
    let out_dir = tempfile::tempdir().unwrap();
    // The test build's binary, packaged without rebuilding (the release build: scripts/package).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (ok, out) = run(Command::new(cargo)
        .current_dir(root())
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "--offline",
            "-o",
        ])
        .arg(out_dir.path()));
    assert!(ok, "cargo deb: {out}");
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb: {out}"));

    let (ok, listing) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{listing}");
    for want in [
        "./usr/bin/millilag",
        "./usr/lib/systemd/system/millilag-writer.service",
        "./usr/lib/systemd/system/millilag-reader.service",
        "./usr/lib/systemd/system/millilag-processor.service",
        "./etc/millilag/millilag.toml",
        "./usr/share/man/man1/millilag.1.gz",
        "./usr/share/millilag/prometheus/millilag-rules.yml",
        "./usr/share/millilag/grafana/millilag-prometheus.json",
        "./usr/share/millilag/schemas/replica_delay.avsc",
    ] {
        assert!(listing.contains(want), "{want} not in:\n{listing}");
    }
    // The secrets file is root-only; the demo (and the test harness it links) is not shipped.
    assert!(
        listing.contains("-rw------- 0/0") && listing.contains("./etc/millilag/millilag.env"),
        "{listing}"
    );
    assert!(!listing.contains("demo"), "{listing}");

    let (_, info) = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(
        info.contains("Package: millilag") && info.contains("Depends: libc6"),
        "{info}"
    );
    let ctrl = out_dir.path().join("control");
    let (ok, out) = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    assert!(ok, "{out}");
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/millilag/millilag.toml")
            && conffiles.contains("/etc/millilag/millilag.env"),
        "{conffiles}"
    );
    // Installing reloads systemd but neither enables nor starts a service (it needs config).
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("daemon-reload"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");

    // lintian, errors and warnings (the two deliberate exceptions are overridden in the package).
    let (ok, out) = run(Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&deb));
    assert!(ok, "lintian: {out}");

    // The packaged binary runs, and accepts the packaged config once its secrets are set.
    let tree = out_dir.path().join("root");
    let (ok, out) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(tree.join("usr/bin/millilag"))
        .arg("check-config")
        .arg(tree.join("etc/millilag/millilag.toml"))
        .env_clear()
        .envs([
            ("MILLILAG_DB_PASSWORD", "x"),
            ("INFLUX_TOKEN", "y"),
            ("MILLILAG_WEBHOOK_SECRET", "z"),
        ]));
    assert!(ok, "packaged check-config: {out}");
}
