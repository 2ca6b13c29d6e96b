//! `[genesys]`: region or endpoints, target (workflow or events), OAuth client and where its
//! secret comes from, built straight into the client's own `ClientConfig`.

use super::*;

/// `[genesys]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGenesys {
    /// Region id (`eu-west-1`) or domain (`mypurecloud.ie`).
    pub region: Option<String>,
    /// Override of the OAuth host.
    pub login_url: Option<String>,
    /// Override of the API host.
    pub api_url: Option<String>,
    /// OAuth client id (not secret).
    pub client_id: Option<String>,
    /// File holding the OAuth client secret.
    pub client_secret_file: Option<PathBuf>,
    /// `workflow` (default) or `events`.
    pub target: Option<String>,
    /// Workflow id for `workflow`.
    pub flow_id: Option<String>,
    /// Optional workflow version.
    pub flow_version: Option<String>,
    /// Event name for `events`.
    pub event_name: Option<String>,
    /// Invocation URL for `events` (a secret when it is a webhook URL).
    pub events_url: Option<String>,
    /// `bearer` (default) or `none`.
    pub events_auth: Option<String>,
    /// Whole-request timeout.
    pub request_timeout_secs: Option<u64>,
    /// TCP+TLS connect timeout.
    pub connect_timeout_secs: Option<u64>,
    /// Refresh the token this long before it expires.
    pub token_refresh_margin_secs: Option<u64>,
}

/// Validated `[genesys]`: the client's own config, built here and handed to
/// `GenesysClient::new` as it is.
pub type GenesysConfig = ClientConfig;

/// A relative `*_file` path is looked up in systemd's `$CREDENTIALS_DIRECTORY` when set.
pub(super) fn resolve_credential(p: PathBuf) -> PathBuf {
    if p.is_relative() {
        if let Some(dir) = std::env::var_os(ENV_CREDENTIALS_DIRECTORY) {
            return PathBuf::from(dir).join(p);
        }
    }
    p
}

pub(super) fn genesys_from_raw(raw: RawGenesys) -> Result<GenesysConfig, ConfigError> {
    // First, before any message could repeat a URL.
    let secret_fix = "remove the credentials from the URL: the OAuth client id goes in \
                      genesys.client_id, its secret in the file named by \
                      genesys.client_secret_file (systemd LoadCredential=)";
    for (key, url) in [
        ("genesys.region", &raw.region),
        ("genesys.login_url", &raw.login_url),
        ("genesys.api_url", &raw.api_url),
    ] {
        if url.as_deref().and_then(credentials_at).is_some() {
            return Err(credentials_in_url(key, secret_fix));
        }
    }
    if raw.events_url.as_deref().and_then(credentials_at).is_some() {
        return Err(credentials_in_url(
            "genesys.events_url",
            "use the webhook integration's invocation URL as Genesys shows it (its token is in \
             the path, never as user:password@), with events_auth = \"none\"; or events_auth = \
             \"bearer\" with the OAuth client (genesys.client_id and genesys.client_secret_file)",
        ));
    }
    let (mut login_url, mut api_url) = (None, None);
    if let Some(region) = &raw.region {
        let (l, a) = alertbridge_genesys::region_hosts(region).map_err(|e| {
            invalid(
                "genesys.region",
                e.to_string(),
                "use a region id like \"eu-west-1\" or a domain like \"mypurecloud.ie\"",
            )
        })?;
        login_url = Some(l);
        api_url = Some(a);
    }
    let login_url = raw.login_url.or(login_url).ok_or_else(|| {
        invalid(
            "genesys.region",
            "neither region nor login_url/api_url is set",
            "set genesys.region, e.g. \"mypurecloud.ie\"",
        )
    })?;
    let api_url = raw.api_url.or(api_url).ok_or_else(|| {
        invalid(
            "genesys.api_url",
            "login_url is set but api_url is not",
            "set genesys.region or both login_url and api_url",
        )
    })?;
    for (key, url) in [
        ("genesys.login_url", &login_url),
        ("genesys.api_url", &api_url),
    ] {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                key,
                format!("`{}` is not an http(s) URL", display_url(url)),
                "write e.g. \"https://api.mypurecloud.ie\"",
            ));
        }
    }
    let client_id = raw.client_id.filter(|s| !s.is_empty()).ok_or_else(|| {
        invalid(
            "genesys.client_id",
            "missing",
            "set the OAuth client id (client credentials grant) from Admin > Integrations > OAuth",
        )
    })?;
    let secret = match raw.client_secret_file {
        Some(p) => SecretSource::File(resolve_credential(p)),
        None if std::env::var_os(ENV_GENESYS_SECRET).is_some() => {
            SecretSource::Env(ENV_GENESYS_SECRET.into())
        }
        None => {
            return Err(invalid(
                "genesys.client_secret_file",
                format!("no client secret: neither client_secret_file nor ${ENV_GENESYS_SECRET} is set"),
                "put the secret in a file readable only by the service (systemd LoadCredential) and name it here",
            ))
        }
    };
    let target = match raw.target.as_deref().unwrap_or("workflow") {
        "workflow" => {
            let flow_id = raw.flow_id.filter(|s| !s.is_empty()).ok_or_else(|| {
                invalid(
                    "genesys.flow_id",
                    "target is \"workflow\" but flow_id is missing",
                    "set the id of the published Architect workflow",
                )
            })?;
            Target::Workflow {
                flow_id,
                flow_version: raw.flow_version,
            }
        }
        "events" => {
            let auth = match raw.events_auth.as_deref().unwrap_or("bearer") {
                "bearer" => EventsAuth::Bearer,
                "none" => EventsAuth::None,
                other => {
                    return Err(invalid(
                        "genesys.events_auth",
                        format!("unknown `{other}`"),
                        "use \"bearer\" or \"none\" (webhook invocation URL)",
                    ))
                }
            };
            Target::Events {
                event_name: raw.event_name.unwrap_or_else(|| "iot.device.alert".into()),
                events_url: raw.events_url,
                auth,
            }
        }
        other => {
            return Err(invalid(
                "genesys.target",
                format!("unknown target `{other}`"),
                "use \"workflow\" (default) or \"events\"",
            ))
        }
    };
    let request_timeout = Duration::from_secs(raw.request_timeout_secs.unwrap_or(10));
    if request_timeout.is_zero() {
        return Err(invalid(
            "genesys.request_timeout_secs",
            "is 0",
            "use e.g. 10",
        ));
    }
    Ok(GenesysConfig {
        login_url: login_url.trim_end_matches('/').to_string(),
        api_url: api_url.trim_end_matches('/').to_string(),
        client_id,
        secret,
        target,
        request_timeout,
        connect_timeout: Duration::from_secs(raw.connect_timeout_secs.unwrap_or(5)),
        refresh_margin: Duration::from_secs(raw.token_refresh_margin_secs.unwrap_or(300)),
    })
}
