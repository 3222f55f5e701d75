//! A private CA made at test time with the openssl CLI, and a TLS terminator (socat) that puts
//! TLS in front of a plaintext service.
//!
//! The server certificate names `IP:127.0.0.1` only, so the same server reached as `localhost`
//! is a hostname mismatch (the verify-identity negative tests) while `127.0.0.1` verifies. A
//! second, unrelated CA is the "wrong CA". Keys are P-256 (generated in milliseconds).

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// CA, server and client certificates in a temp dir, PEM.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Make the CA, a server certificate for 127.0.0.1 and a client certificate (CN millilag),
    /// plus an unrelated CA.
    pub fn new() -> Result<Pki> {
        let dir = tempfile::Builder::new().prefix("millilag-pki-").tempdir()?;
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-subj",
                    &format!("/CN=millilag test {ca}"),
                ],
            )?;
        }
        leaf(
            d,
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )?;
        leaf(
            d,
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )?;
        Ok(Pki { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// A CA that signed nothing these servers present.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }
}

/// A key and a certificate signed by `ca`, with the extensions in `ext`.
fn leaf(d: &Path, name: &str, ext: &str) -> Result<()> {
    std::fs::write(d.join(format!("{name}.ext")), ext)?;
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=millilag test {name}"),
        ],
    )?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let bin = crate::find_binary("openssl", "MILLILAG_OPENSSL", &[PathBuf::from("/usr/bin")])?;
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// socat accepting TLS on a free port (with the [`Pki`] server certificate) and relaying each
/// connection in plaintext to `upstream` on 127.0.0.1. Tansu 0.6's own TLS listener did not
/// work with librdkafka when tried; a terminator in front of it on the advertised port does.
pub struct Terminator {
    pub port: u16,
    guard: Guard,
    _log_dir: tempfile::TempDir,
}

impl Terminator {
    pub async fn start(pki: &Pki, upstream: u16) -> Result<Terminator> {
        Self::start_on(pki, free_port(), upstream).await
    }

    /// On a port picked by the caller (Tansu must advertise it before it starts).
    pub async fn start_on(pki: &Pki, port: u16, upstream: u16) -> Result<Terminator> {
        let socat = crate::find_binary("socat", "MILLILAG_SOCAT", &[PathBuf::from("/usr/bin")])?;
        let log_dir = tempfile::Builder::new()
            .prefix("millilag-socat-")
            .tempdir()?;
        let mut cmd = Command::new(socat);
        cmd.arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            pki.server_cert().display(),
            pki.server_key().display()
        ))
        .arg(format!("TCP:127.0.0.1:{upstream}"));
        let guard = Guard::spawn("socat", cmd, &log_dir.path().join("socat.log"))?;
        let mut t = Terminator {
            port,
            guard,
            _log_dir: log_dir,
        };
        // Listening is enough: each connection is handled by a forked child.
        let ready = wait_for("socat listening", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        if let Err(e) = ready {
            let alive = t.guard.is_running();
            bail!("{e} (running: {alive}); log:\n{}", t.guard.log_tail(10));
        }
        Ok(t)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn kill(&mut self) {
        self.guard.kill();
    }
}
