//! Who may call the client API (`medallion.v1.Coordinator`) and the Flight SQL endpoint.
//!
//! Callers present a bearer token (`authorization: Bearer <token>`). The coordinator knows
//! tokens only by their SHA-256, from a token file (a mounted Secret), each with a name and a
//! role: `viewer` reads (runs, pipelines, executors, tables over Flight SQL), `operator` also acts on runs (submit,
//! cancel, trigger, backfill, rerun, pause, resume), `admin` also deploys and undeploys. A
//! call without a known token answers UNAUTHENTICATED, one beyond its role
//! PERMISSION_DENIED; both, and every allowed call that changes something, are written to the
//! audit log (the `medallion::audit` log target: who, what, outcome; the log line has the
//! time). The file is read again when it changes, so tokens rotate without a restart.
//! JSON Web Tokens of an identity provider may be accepted too (see [`jwt`]).
//!
//! ```text
//! # tokens.yaml: `medallion token <name> <role>` prints a token and its entry
//! - { name: dashboards, role: viewer, sha256: 5e884898da28047151d0e56f8dc6292773603d0d... }
//! - { name: ci, role: operator, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b... }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;

use crate::service::{Gate, GrpcService};

mod jwt;
pub use jwt::{Jwt, JwtArgs};

/// What a token may do; each role may do what the roles before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum AccessRole {
    Viewer,
    Operator,
    Admin,
}

impl AccessRole {
    /// The role a method of the client API needs; `None` for a method this version does not
    /// know (refused).
    pub fn needed_for(method: &str) -> Option<AccessRole> {
        Some(match method {
            "GetRun" | "ListRuns" | "WatchRun" | "ListExecutors" | "ListPipelines" | "Plan" => {
                AccessRole::Viewer
            }
            "Submit" | "CancelRun" | "Trigger" | "Backfill" | "Rerun" | "SetPaused" => {
                AccessRole::Operator
            }
            "Deploy" | "Undeploy" => AccessRole::Admin,
            _ => return None,
        })
    }
}

/// One entry of the token file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token, as the audit log names them.
    pub name: String,
    pub role: AccessRole,
    /// The token's SHA-256, in hex: the token itself is never stored.
    pub sha256: String,
    /// The pipelines the token may see and act on (names, `*` wildcards: `sales_*`); empty,
    /// all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<String>,
}

/// The SHA-256 of a token, in hex, as the token file holds it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The caller of an allowed call, put in the request's extensions for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: AccessRole,
    /// The pipelines granted (see [`TokenEntry::pipelines`]); empty, all of them.
    pub pipelines: Vec<glob::Pattern>,
}

impl Caller {
    /// Whether the caller may see and act on `pipeline`.
    pub fn granted(&self, pipeline: &str) -> bool {
        self.pipelines.is_empty() || self.pipelines.iter().any(|p| p.matches(pipeline))
    }
}

/// Refuses a call about `pipeline` by a caller not granted it (a call without tokens
/// configured has no caller, and is not limited), and audits the refusal.
pub fn check_grant(caller: Option<&Caller>, method: &str, pipeline: &str) -> Result<(), Status> {
    match caller {
        Some(caller) if !caller.granted(pipeline) => {
            tracing::warn!(target: "medallion::audit", caller = %caller.name, %method, pipeline, outcome = "denied", reason = "pipeline not granted");
            Err(Status::permission_denied(format!(
                "'{}' is not granted pipeline '{pipeline}'",
                caller.name
            )))
        }
        _ => Ok(()),
    }
}

/// The tokens of a token file, read again whenever the file's modification time changes.
pub struct Tokens {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    modified: Option<SystemTime>,
    /// Callers by token hash.
    callers: HashMap<String, Caller>,
}

impl Tokens {
    /// Reads the token file; an unreadable or invalid file fails the start.
    pub fn load(path: &Path) -> Result<Arc<Self>> {
        let loaded = read_tokens(path)?;
        tracing::info!(file = %path.display(), tokens = loaded.callers.len(), "client API requires tokens");
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            loaded: Mutex::new(loaded),
        }))
    }

    /// Who holds `token`. A changed file is read again first; a file that became invalid
    /// keeps the tokens last read (and says so in the log).
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let mut loaded = self.loaded.lock().expect("tokens lock");
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified != loaded.modified {
            match read_tokens(&self.path) {
                Ok(fresh) => {
                    tracing::info!(file = %self.path.display(), tokens = fresh.callers.len(), "token file read again");
                    *loaded = fresh;
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "token file unreadable; keeping the tokens read before"
                    );
                    loaded.modified = modified;
                }
            }
        }
        loaded.callers.get(&token_hash(token)).cloned()
    }
}

fn read_tokens(path: &Path) -> Result<Loaded> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let entries: Vec<TokenEntry> =
        serde_saphyr::from_str(&text).with_context(|| format!("token file {}", path.display()))?;
    let mut callers = HashMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let hash = entry.sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "token file {}: entry {i} ({}): sha256 must be 64 hex digits (the token's \
                 SHA-256, never the token)",
                path.display(),
                entry.name
            );
        }
        let pipelines = entry.pipelines.iter().map(|p| glob::Pattern::new(p));
        let pipelines = pipelines.collect::<Result<Vec<_>, _>>().with_context(|| {
            format!(
                "token file {}: entry {i} ({}): pipelines",
                path.display(),
                entry.name
            )
        })?;
        let caller = Caller {
            name: entry.name,
            role: entry.role,
            pipelines,
        };
        if let Some(other) = callers.insert(hash, caller) {
            bail!(
                "token file {}: entry {i} has the same token as '{}'",
                path.display(),
                other.name
            );
        }
    }
    Ok(Loaded { modified, callers })
}

/// Who may call: holders of a token of the token file, bearers of a JSON Web Token the
/// identity provider signed, or both.
pub struct Identities {
    pub tokens: Option<Arc<Tokens>>,
    pub jwt: Option<Arc<Jwt>>,
}

impl Identities {
    /// The caller `token` names, or why it names none.
    pub fn caller(&self, token: &str) -> Result<Caller, String> {
        if let Some(jwt) = &self.jwt
            && Jwt::looks_like(token)
        {
            return jwt.caller(token);
        }
        let known = self.tokens.as_ref().and_then(|t| t.caller(token));
        known.ok_or_else(|| "unknown token".to_string())
    }
}

/// Decides a call to `path` (`/medallion.v1.Coordinator/<Method>`) with the bearer token in
/// `authorization`; a refusal comes with who was refused, for the audit log.
fn decide(
    identities: &Identities,
    path: &str,
    authorization: Option<&str>,
) -> Result<Caller, (String, Status)> {
    let method = path.rsplit('/').next().unwrap_or_default();
    let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err((
            "no token".to_string(),
            Status::unauthenticated(
                "this coordinator requires a token: `authorization: Bearer <token>` \
                 (medallion --token-file, or MEDALLION_TOKEN)",
            ),
        ));
    };
    let caller = identities
        .caller(token.trim())
        .map_err(|why| ("unknown token".to_string(), Status::unauthenticated(why)))?;
    // The Flight SQL endpoint only reads (`crate::flight`).
    let needed = if path.starts_with(FLIGHT_SERVICE) {
        Some(AccessRole::Viewer)
    } else {
        AccessRole::needed_for(method)
    };
    match needed {
        Some(needed) if caller.role >= needed => Ok(caller),
        Some(needed) => Err((
            caller.name.clone(),
            Status::permission_denied(format!(
                "{method} needs the {needed:?} role; '{}' has {:?}",
                caller.name, caller.role
            )),
        )),
        None => Err((
            caller.name,
            Status::permission_denied(format!("unknown method {method}")),
        )),
    }
}

/// The path prefix of the Flight SQL endpoint's methods.
const FLIGHT_SERVICE: &str = "/arrow.flight.protocol.FlightService/";

/// The client API's gate when callers must say who they are; see the module documentation.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Identities>);

impl Gate for Authenticate {
    fn call<S>(
        &self,
        mut request: http::Request<Body>,
        service: S,
    ) -> BoxFuture<'static, http::Response<Body>>
    where
        S: GrpcService,
    {
        let path = request.uri().path().to_string();
        let method = path.rsplit('/').next().unwrap_or_default().to_string();
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match decide(&self.0, &path, authorization) {
            Ok(caller) => {
                if AccessRole::needed_for(&method) > Some(AccessRole::Viewer) {
                    tracing::info!(target: "medallion::audit", caller = %caller.name, role = ?caller.role, %method, outcome = "allowed");
                }
                request.extensions_mut().insert(caller);
                service.answer(request)
            }
            Err((who, status)) => {
                tracing::warn!(target: "medallion::audit", caller = %who, %method, outcome = "denied", code = ?status.code(), reason = status.message());
                let response = status.into_http();
                Box::pin(async move { response })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> (tempfile::TempDir, Identities) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, text).unwrap();
        let identities = Identities {
            tokens: Some(Tokens::load(&path).unwrap()),
            jwt: None,
        };
        (dir, identities)
    }

    fn entry(name: &str, role: &str, token: &str) -> String {
        format!(
            "- {{ name: {name}, role: {role}, sha256: {} }}\n",
            token_hash(token)
        )
    }

    const SUBMIT: &str = "/medallion.v1.Coordinator/Submit";

    #[test]
    fn each_role_may_do_what_the_roles_before_it_may() {
        let text =
            entry("v", "viewer", "tv") + &entry("o", "operator", "to") + &entry("a", "admin", "ta");
        let (_dir, tokens) = tokens(&text);
        let code = |method: &str, token: Option<&str>| {
            let header = token.map(|t| format!("Bearer {t}"));
            let path = format!("/medallion.v1.Coordinator/{method}");
            decide(&tokens, &path, header.as_deref()).map_err(|(_, s)| s.code())
        };
        use tonic::Code::{PermissionDenied, Unauthenticated};
        assert_eq!(code("ListRuns", None), Err(Unauthenticated));
        assert_eq!(code("ListRuns", Some("wrong")), Err(Unauthenticated));
        assert_eq!(code("ListRuns", Some("tv")).unwrap().name, "v");
        assert_eq!(code("Submit", Some("tv")), Err(PermissionDenied));
        assert_eq!(
            code("Submit", Some("to")).unwrap().role,
            AccessRole::Operator
        );
        assert_eq!(code("Deploy", Some("to")), Err(PermissionDenied));
        assert_eq!(code("Deploy", Some("ta")).unwrap().name, "a");
        assert_eq!(code("Nonsense", Some("ta")), Err(PermissionDenied));
    }

    #[test]
    fn a_changed_token_file_is_read_again_and_a_broken_one_keeps_the_old_tokens() {
        let (dir, tokens) = tokens(&entry("ci", "operator", "old"));
        let path = dir.path().join("tokens.yaml");
        assert!(decide(&tokens, SUBMIT, Some("Bearer old")).is_ok());
        // Another modification time, as a rotated Secret's file has.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, entry("ci", "operator", "new")).unwrap();
        assert!(decide(&tokens, SUBMIT, Some("Bearer old")).is_err());
        assert!(decide(&tokens, SUBMIT, Some("Bearer new")).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "- { name: ci, role: root }\n").unwrap();
        assert!(decide(&tokens, SUBMIT, Some("Bearer new")).is_ok());
    }

    #[test]
    fn a_token_file_holding_a_token_instead_of_its_hash_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "- { name: ci, role: admin, sha256: hunter2 }\n").unwrap();
        let error = format!("{:#}", Tokens::load(&path).err().unwrap());
        assert!(
            error.contains("entry 0 (ci): sha256 must be 64 hex digits"),
            "{error}"
        );
    }
}
