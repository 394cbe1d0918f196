//! JSON Web Tokens from an identity provider (OIDC: Keycloak, Dex, Okta, a cloud's workload
//! identity), accepted as bearer tokens beside the token file.
//!
//! A token is accepted when a key of the provider's key set (JWKS) signed it with an
//! asymmetric algorithm, its `iss` and `aud` are the configured ones, and it has not expired
//! (30 s leeway for clocks). Its role is the claim `--jwt-role-claim`: a role name, or a list
//! of names of which the highest role counts; its pipelines the claim `medallion_pipelines`
//! (names or `*` patterns; absent: all); its name in the audit log `email`, else
//! `preferred_username`, else `sub`. The key set is a file (read again when it changes) or a
//! URL, fetched at start, every ten minutes, and when a token names a key it does not hold
//! (at most every 30 s), so the provider's key rotation needs no restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::{AccessRole, Caller};

/// Where JSON Web Tokens are checked against.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JwtArgs {
    /// Accept JSON Web Tokens signed by a key of this key set: the identity provider's
    /// `jwks_uri` (https://) or a JWKS file. Needs --jwt-issuer and --jwt-audience.
    #[arg(
        long,
        env = "MEDALLION_JWT_JWKS",
        requires_all = ["jwt_issuer", "jwt_audience"]
    )]
    pub jwt_jwks: Option<String>,
    /// The `iss` accepted tokens have (the provider's issuer URL).
    #[arg(long, env = "MEDALLION_JWT_ISSUER", requires = "jwt_jwks")]
    pub jwt_issuer: Option<String>,
    /// The `aud` accepted tokens are for (the client id Medallion has at the provider).
    #[arg(long, env = "MEDALLION_JWT_AUDIENCE", requires = "jwt_jwks")]
    pub jwt_audience: Option<String>,
    /// The claim holding the caller's role (viewer, operator, admin).
    #[arg(
        long,
        env = "MEDALLION_JWT_ROLE_CLAIM",
        default_value = "medallion_role"
    )]
    pub jwt_role_claim: String,
}

/// The claim listing the pipelines a token is granted.
const PIPELINES_CLAIM: &str = "medallion_pipelines";
/// Algorithms accepted: signatures only the provider can make (no shared secrets).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
const REFRESH: Duration = Duration::from_secs(600);
const MIN_REFETCH: Duration = Duration::from_secs(30);

/// Checks JSON Web Tokens; see the module documentation.
pub struct Jwt {
    source: Source,
    issuer: String,
    audience: String,
    role_claim: String,
    keys: RwLock<Keys>,
    /// Asks the fetching task for the key set again (a token named an unknown key).
    stale: Notify,
}

enum Source {
    File(PathBuf),
    Url(String),
}

struct Keys {
    set: JwkSet,
    /// The file's modification time when it was read.
    modified: Option<SystemTime>,
}

impl Jwt {
    /// Reads the key set (a URL is fetched and then kept fresh by a task); `None` without
    /// `--jwt-jwks`. An unreadable key set fails the start.
    pub async fn start(args: &JwtArgs) -> Result<Option<Arc<Self>>> {
        let Some(jwks) = &args.jwt_jwks else {
            return Ok(None);
        };
        let source = if jwks.starts_with("https://") || jwks.starts_with("http://") {
            Source::Url(jwks.clone())
        } else {
            Source::File(PathBuf::from(jwks))
        };
        let keys = source.load().await?;
        tracing::info!(jwks = %jwks, keys = keys.set.keys.len(), "client API accepts JSON Web Tokens");
        let jwt = Arc::new(Self {
            source,
            issuer: args.jwt_issuer.clone().context("--jwt-issuer")?,
            audience: args.jwt_audience.clone().context("--jwt-audience")?,
            role_claim: args.jwt_role_claim.clone(),
            keys: RwLock::new(keys),
            stale: Notify::new(),
        });
        if let Source::Url(url) = &jwt.source {
            tokio::spawn(keep_fresh(jwt.clone(), url.clone()));
        }
        Ok(Some(jwt))
    }

    /// Whether `token` has the shape of a JSON Web Token (three dot-separated parts), as the
    /// token file's tokens do not.
    pub fn looks_like(token: &str) -> bool {
        token.starts_with("eyJ") && token.split('.').count() == 3
    }

    /// The caller `token` names, or why it is refused.
    pub fn caller(&self, token: &str) -> Result<Caller, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("not a valid JWT: {e}"))?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(format!(
                "JWT algorithm {:?} is not accepted (asymmetric signatures only)",
                header.alg
            ));
        }
        self.reread_file();
        let key = {
            let keys = self.keys.read().expect("jwks lock");
            let jwk = match &header.kid {
                Some(kid) => keys.set.find(kid),
                None if keys.set.keys.len() == 1 => keys.set.keys.first(),
                None => None,
            };
            match jwk {
                Some(jwk) => DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?,
                None => {
                    self.stale.notify_one();
                    return Err(format!(
                        "JWT signed by a key the key set does not hold (kid {:?})",
                        header.kid
                    ));
                }
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| format!("JWT refused: {e}"))?
            .claims;
        self.caller_of(&claims)
    }

    fn caller_of(&self, claims: &Map<String, Value>) -> Result<Caller, String> {
        let name = ["email", "preferred_username", "sub"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .unwrap_or_default()
            .to_string();
        let roles = match claims.get(&self.role_claim) {
            Some(Value::String(role)) => vec![role.as_str()],
            Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let role = roles
            .iter()
            .filter_map(|r| serde_json::from_value::<AccessRole>(Value::from(*r)).ok())
            .max()
            .ok_or_else(|| {
                format!(
                    "JWT of '{name}' has no role in its claim '{}' (viewer, operator or admin)",
                    self.role_claim
                )
            })?;
        let pipelines = match claims.get(PIPELINES_CLAIM) {
            None => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    let n = n.as_str().ok_or("not a string")?;
                    glob::Pattern::new(n).map_err(|_| "not a pattern")
                })
                .collect::<Result<_, _>>()
                .map_err(|e| format!("JWT claim '{PIPELINES_CLAIM}': {e}"))?,
            Some(_) => return Err(format!("JWT claim '{PIPELINES_CLAIM}' is not a list")),
        };
        Ok(Caller {
            name,
            role,
            pipelines,
        })
    }

    /// A key set file that changed is read again; a broken one keeps the keys read before.
    fn reread_file(&self) {
        let Source::File(path) = &self.source else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == self.keys.read().expect("jwks lock").modified {
            return;
        }
        let mut keys = self.keys.write().expect("jwks lock");
        match read_file(path) {
            Ok(fresh) => {
                tracing::info!(file = %path.display(), keys = fresh.set.keys.len(), "JWKS read again");
                *keys = fresh;
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "JWKS unreadable; keeping the keys read before"
                );
                keys.modified = modified;
            }
        }
    }
}

impl Source {
    async fn load(&self) -> Result<Keys> {
        match self {
            Source::File(path) => read_file(path),
            Source::Url(url) => fetch(url).await,
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Keys> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
    Ok(Keys {
        set: parse(&text).with_context(|| format!("JWKS file {}", path.display()))?,
        modified,
    })
}

async fn fetch(url: &str) -> Result<Keys> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching the JWKS {url}"))?;
    let text = response
        .text()
        .await
        .with_context(|| format!("JWKS {url}"))?;
    Ok(Keys {
        set: parse(&text).with_context(|| format!("JWKS {url}"))?,
        modified: None,
    })
}

fn parse(text: &str) -> Result<JwkSet> {
    let set: JwkSet = serde_json::from_str(text).context("not a JSON Web Key Set")?;
    if set.keys.is_empty() {
        bail!("the key set holds no key");
    }
    Ok(set)
}

/// Fetches a URL's key set every [`REFRESH`], and sooner when a token named an unknown key
/// (not more often than [`MIN_REFETCH`]), for as long as the coordinator runs.
async fn keep_fresh(jwt: Arc<Jwt>, url: String) {
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            () = jwt.stale.notified() => {
                tokio::time::sleep(MIN_REFETCH.saturating_sub(last.elapsed())).await;
            }
        }
        last = Instant::now();
        match fetch(&url).await {
            Ok(keys) => *jwt.keys.write().expect("jwks lock") = keys,
            Err(e) => tracing::warn!(error = format!("{e:#}"), "JWKS not refreshed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EC public key in JWKS form (the key need not match any token here).
    const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    async fn serve(routes: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes).await });
        format!("http://{address}")
    }

    fn args(jwks: String) -> JwtArgs {
        JwtArgs {
            jwt_jwks: Some(jwks),
            jwt_issuer: Some("https://idp.example".into()),
            jwt_audience: Some("medallion".into()),
            jwt_role_claim: "medallion_role".into(),
        }
    }

    #[tokio::test]
    async fn a_key_set_is_fetched_from_its_url_and_a_missing_one_fails_the_start() {
        let url =
            serve(axum::Router::new().route("/jwks", axum::routing::get(|| async { JWKS }))).await;
        let jwt = Jwt::start(&args(format!("{url}/jwks")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(jwt.keys.read().unwrap().set.keys.len(), 1);

        let error = Jwt::start(&args(format!("{url}/nothing-here")))
            .await
            .err()
            .unwrap();
        let message = format!("{error:#}");
        assert!(
            message.contains("nothing-here") && message.contains("404"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn roles_pipelines_and_names_come_from_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, JWKS).unwrap();
        let jwt = Jwt::start(&args(file.display().to_string()))
            .await
            .unwrap()
            .unwrap();
        let claims = |json: &str| serde_json::from_str::<Map<String, Value>>(json).unwrap();

        let caller = jwt
            .caller_of(&claims(
                r#"{"sub": "u1", "preferred_username": "ada", "medallion_role": ["viewer", "admin", "cook"],
                    "medallion_pipelines": ["sales_*"]}"#,
            ))
            .unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.role),
            ("ada", AccessRole::Admin)
        );
        assert!(caller.granted("sales_daily") && !caller.granted("hr"));

        let caller = jwt
            .caller_of(&claims(r#"{"sub": "u2", "medallion_role": "viewer"}"#))
            .unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.role),
            ("u2", AccessRole::Viewer)
        );
        assert!(caller.granted("hr"));

        let refused = jwt.caller_of(&claims(r#"{"sub": "u3", "medallion_role": "cook"}"#));
        assert!(refused.unwrap_err().contains("no role"));
        let refused = jwt.caller_of(&claims(
            r#"{"sub": "u4", "medallion_role": "admin", "medallion_pipelines": "sales"}"#,
        ));
        assert!(refused.unwrap_err().contains("not a list"));
        assert!(
            jwt.caller("not.a.jwt")
                .unwrap_err()
                .contains("not a valid JWT")
        );

        std::fs::write(&file, "{}").unwrap();
        jwt.reread_file();
        assert_eq!(
            jwt.keys.read().unwrap().set.keys.len(),
            1,
            "a broken file keeps the keys"
        );
    }
}
