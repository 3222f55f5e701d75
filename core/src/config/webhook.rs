//! `[[webhook]]`: where alert transitions are posted, in which format, signed with which key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::http_url::{check_tls_ca, HttpAuth, HttpUrl};
use super::{default_sink_timeout, sink::check_timeout};
use crate::duration::HumanDuration;
use crate::secret::{resolve_secret, EnvUnset, Sensitive};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Json,
    Alertmanager,
    Slack,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (for alertmanager: the /api/v2/alerts URL). Printed with its password,
    /// credential-like query values and, for Slack-style URLs, its path masked.
    pub url: HttpUrl,
    /// json | alertmanager | slack.
    #[serde(default = "default_webhook_format")]
    pub format: WebhookFormat,
    /// CA certificate(s), PEM, the receiver's certificate must chain to (https). Absent: the
    /// system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// User name for HTTP basic authentication (the password from `password_env` or
    /// `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable with the basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File with the basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable with a bearer token (`Authorization: Bearer <token>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_env: Option<String>,
    /// File with the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Environment variable with the HMAC-SHA256 key; when set, requests carry
    /// `X-Millilag-Timestamp: <unix seconds>` and
    /// `X-Millilag-Signature: sha256=<hex of HMAC(key, "<timestamp>.<body>")>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_env: Option<String>,
    /// File with the HMAC key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
    /// Give up on one notification after this long of retries (it is logged and counted).
    #[serde(default = "default_webhook_give_up")]
    pub give_up_after: HumanDuration,
    /// Resolved HMAC key.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<Sensitive>,
    /// Resolved `Authorization`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
}

const fn default_webhook_format() -> WebhookFormat {
    WebhookFormat::Json
}
fn default_webhook_give_up() -> HumanDuration {
    HumanDuration::from_secs(600)
}

impl WebhookConfig {
    pub(super) fn validate(&self, key: &str, p: &mut Vec<String>) {
        check_timeout(&format!("{key}.timeout"), self.timeout, p);
        if self.give_up_after.0.is_zero() {
            p.push(format!(
                "{key}.give_up_after (0s) must be more than zero; e.g. \"10m\" (the default)"
            ));
        }
        let basic = self.username.is_some();
        let basic_pw = self.password_env.is_some() || self.password_file.is_some();
        let bearer = self.bearer_token_env.is_some() || self.bearer_token_file.is_some();
        if basic_pw && !basic {
            p.push(format!(
                "{key}.password_env/password_file is set without {key}.username; set username (basic auth)"
            ));
        }
        if basic && !basic_pw {
            p.push(format!(
                "{key}.username is set without password_env or password_file; set one of them"
            ));
        }
        if basic && bearer {
            p.push(format!(
                "{key}: username (basic auth) and bearer_token_* are both set; keep one"
            ));
        }
    }

    pub(super) fn resolve_secret(
        &mut self,
        key: &str,
        env: &BTreeMap<String, String>,
        p: &mut Vec<String>,
    ) {
        let mut get = |name: &str, env_name: &Option<String>, file: &Option<PathBuf>| {
            resolve_secret(
                &format!("{key}.{name}"),
                env_name.as_deref(),
                file.as_deref(),
                env,
                EnvUnset::Problem("export it or remove the key"),
            )
            .unwrap_or_else(|e| {
                p.push(e);
                None
            })
        };
        self.hmac_secret = get("hmac_secret", &self.hmac_secret_env, &self.hmac_secret_file);
        let password = get("password", &self.password_env, &self.password_file);
        let bearer = get(
            "bearer_token",
            &self.bearer_token_env,
            &self.bearer_token_file,
        );
        self.auth = match (&self.username, password, bearer) {
            (Some(u), Some(pw), _) => Some(HttpAuth::Basic {
                username: u.clone(),
                password: pw,
            }),
            (None, _, Some(token)) => Some(HttpAuth::Bearer { token }),
            _ => None,
        };
        if self.format == WebhookFormat::Slack {
            self.url.hide_path();
        }
        check_tls_ca(key, &self.url, self.tls_ca_file.as_deref(), p);
    }
}
