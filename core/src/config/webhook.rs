//! `[[webhook]]`: where alert transitions are posted, in which format, signed with which key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{default_sink_timeout, is_http_url, sink::check_timeout};
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
    /// Where to POST (for alertmanager: the /api/v2/alerts URL).
    pub url: String,
    /// json | alertmanager | slack.
    #[serde(default = "default_webhook_format")]
    pub format: WebhookFormat,
    /// Environment variable with the HMAC-SHA256 key; when set, requests carry
    /// `X-Millilag-Signature: sha256=<hex of HMAC(body)>`.
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
        if !is_http_url(&self.url) {
            p.push(format!(
                "{key}.url ({:?}) must start with http:// or https://",
                self.url
            ));
        }
    }

    pub(super) fn resolve_secret(
        &mut self,
        key: &str,
        env: &BTreeMap<String, String>,
        p: &mut Vec<String>,
    ) {
        self.hmac_secret = resolve_secret(
            &format!("{key}.hmac_secret"),
            self.hmac_secret_env.as_deref(),
            self.hmac_secret_file.as_deref(),
            env,
            EnvUnset::Problem("export it or remove the key"),
        )
        .unwrap_or_else(|e| {
            p.push(e);
            None
        });
    }
}
