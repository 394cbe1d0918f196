//! Where a shared coordinator lets pipelines read and write.
//!
//! A coordinator runs specs that other people send. Without limits a spec could read any file
//! its executors can reach (`path: /etc/shadow`, `../../secrets`, a link out of the data
//! directory) or write a lake anywhere (`lake: /etc`). A [`Confinement`] names the one
//! directory relative paths resolve against (never the client's: its paths mean nothing on the
//! cluster) and the local directories and object-store prefixes sources may read and lakes may
//! live in. Paths are checked after normalisation and after resolving symbolic links, so
//! neither `..` nor a link leads out.
//!
//! ```
//! use std::sync::Arc;
//! use medallion_pipeline::{Confinement, RunDate};
//!
//! let root = std::env::temp_dir();
//! let confinement = Arc::new(Confinement::new(&root, &[], &[]).unwrap());
//! let yaml = "pipeline: shop\nlake: lake\nsources:\n  - { name: api, format: json, path: /etc/*.conf }\n";
//! let errors = confinement.admit(yaml.into(), "shop.yaml".into(), RunDate::Latest).unwrap_err();
//! let error = &errors.0[0];
//! assert_eq!((error.field.as_str(), error.line), ("sources[0].path", 4));
//! assert!(error.message.contains("outside the directories"), "{error}");
//! ```

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Errors, SpecErrors};
use crate::pipeline::{Pipeline, RunDate, normalize};
use crate::spec::{LakeSpec, Secret};

/// The environment variables a confined spec may name (`password_env`, `url: env:...`):
/// those set for it, not the cluster's own credentials.
pub const SECRET_ENV_PREFIX: &str = "MEDALLION_SECRET_";

/// The directories and URL prefixes a coordinator's pipelines may use: see the module docs.
#[derive(Debug)]
pub struct Confinement {
    root: PathBuf,
    sources: Vec<Allowed>,
    lakes: Vec<Allowed>,
}

/// One place pipelines may use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// A local directory, with its symbolic links resolved.
    Dir(PathBuf),
    /// An object-store prefix, ending in `/`.
    Url(String),
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowed::Dir(dir) => write!(f, "{}", dir.display()),
            Allowed::Url(url) => write!(f, "{url}"),
        }
    }
}

impl Allowed {
    fn parse(root: &Path, written: &str) -> Result<Self, String> {
        if written.contains("://") {
            check_url(written)?;
            return Ok(Allowed::Url(format!("{}/", written.trim_end_matches('/'))));
        }
        let path = normalize(&root.join(written));
        let real = real_path(&path)?;
        if real == Path::new("/") {
            return Err(format!(
                "'{written}' is the whole file system: name the directories pipelines may use"
            ));
        }
        Ok(Allowed::Dir(real))
    }

    fn contains(&self, location: &Location) -> bool {
        match (self, location) {
            (Allowed::Dir(dir), Location::Path(path)) => path.starts_with(dir),
            (Allowed::Url(prefix), Location::Url(url)) => format!("{url}/").starts_with(prefix),
            _ => false,
        }
    }
}

/// Where a spec points, ready to compare with what is allowed.
enum Location {
    Path(PathBuf),
    Url(String),
}

impl Confinement {
    /// Relative paths resolve against `root`; sources may read under `sources` and lakes may
    /// be under `lakes` (local directories, relative ones against `root`, or object-store URL
    /// prefixes). An empty list allows `root` alone.
    pub fn new(root: &Path, sources: &[String], lakes: &[String]) -> Result<Self, String> {
        let root = std::path::absolute(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let root =
            std::fs::canonicalize(&root).map_err(|e| format!("root '{}': {e}", root.display()))?;
        let allowed = |list: &[String]| -> Result<Vec<Allowed>, String> {
            if list.is_empty() {
                return Ok(vec![Allowed::Dir(root.clone())]);
            }
            list.iter().map(|w| Allowed::parse(&root, w)).collect()
        };
        Ok(Confinement {
            sources: allowed(sources)?,
            lakes: allowed(lakes)?,
            root,
        })
    }

    /// The directory relative paths in specs resolve against.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Parses and validates spec text a client sent, with relative paths resolved against
    /// the root, and refuses it unless its lake and every source lie where they may.
    pub fn admit(
        self: &Arc<Self>,
        yaml: String,
        origin: String,
        date: RunDate,
    ) -> Result<Pipeline, SpecErrors> {
        let mut pipeline = Pipeline::parse_for(yaml, origin, self.root.clone(), date)?;
        let mut errors = Errors::new(&pipeline.origin);
        let field = match &pipeline.spec.lake.value {
            LakeSpec::Root(_) => "lake",
            LakeSpec::Detailed { .. } => "lake.root",
        };
        if let Err(message) = self.allows(&self.lakes, &pipeline.lake_root, "lakes") {
            errors.on(&pipeline.spec.lake, field, message);
        }
        for (i, source) in pipeline.spec.sources.iter().enumerate() {
            if let Some(path) = &source.path {
                let location = pipeline.source_location(source);
                if let Err(message) = self.allows(&self.sources, &location, "sources") {
                    errors.on(path, format!("sources[{i}].path"), message);
                }
            }
            // A submitted spec must not make the cluster send its own files or variables
            // as a secret to a server the spec names.
            for (field, at, secret) in source.secrets() {
                let field = format!("sources[{i}].{field}");
                match secret {
                    Secret::File(path) => {
                        let location = pipeline.spec_relative(path);
                        if let Err(message) = self.allows(&self.sources, &location, "sources") {
                            errors.on(at, field, message);
                        }
                    }
                    Secret::Env(var) if !var.starts_with(SECRET_ENV_PREFIX) => errors.on(
                        at,
                        field,
                        format!("{var}: a cluster gives specs only the variables named {SECRET_ENV_PREFIX}*"),
                    ),
                    Secret::Env(_) => {}
                }
            }
        }
        if !errors.found.is_empty() {
            return Err(SpecErrors(errors.found));
        }
        pipeline.confinement = Some(self.clone());
        Ok(pipeline)
    }

    /// Refuses a file a source's listing found (its symbolic links resolved) when it lies
    /// outside what sources may read: a link in the data directory must not lead out of it.
    pub fn check_source_file(&self, real: &Path) -> Result<(), String> {
        let location = Location::Path(real.to_path_buf());
        if self.sources.iter().any(|a| a.contains(&location)) {
            return Ok(());
        }
        Err(format!(
            "'{}' is outside the directories this coordinator allows sources in ({})",
            real.display(),
            list(&self.sources)
        ))
    }

    /// Whether `location` (a path or glob) lies within `allowed`: the part before its first
    /// wildcard, with its links resolved, must.
    fn allows(&self, allowed: &[Allowed], location: &str, what: &str) -> Result<(), String> {
        let fixed = fixed_part(location);
        let resolved = if location.contains("://") {
            check_url(location)?;
            Location::Url(fixed.trim_end_matches('/').to_string())
        } else {
            Location::Path(real_path(Path::new(fixed))?)
        };
        if allowed.iter().any(|a| a.contains(&resolved)) {
            return Ok(());
        }
        let shown = match &resolved {
            Location::Path(real) if real != Path::new(fixed) => format!(
                "'{location}' (really '{}', through a symbolic link)",
                real.display()
            ),
            _ => format!("'{location}'"),
        };
        Err(format!(
            "{shown} is outside the directories this coordinator allows {what} in ({})",
            list(allowed)
        ))
    }
}

fn list(allowed: &[Allowed]) -> String {
    let all: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    all.join(", ")
}

/// The part of a path or glob before its first wildcard: what a listing starts from.
fn fixed_part(location: &str) -> &str {
    match location.find(['*', '?', '[', '{']) {
        Some(i) => location[..i].rsplit_once('/').map_or("", |(dir, _)| dir),
        None => location,
    }
}

/// Refuses URL paths that a store might read as something else than they look: dot
/// segments, encoded dots, slashes or backslashes.
fn check_url(url: &str) -> Result<(), String> {
    let (_, rest) = url.split_once("://").unwrap_or(("", url));
    let lower = rest.to_ascii_lowercase();
    if rest.split('/').any(|s| s == "." || s == "..")
        || ["%2e", "%2f", "%5c", "\\"]
            .iter()
            .any(|t| lower.contains(t))
    {
        return Err(format!(
            "'{url}': dot segments and encoded dots or slashes are not allowed in a URL"
        ));
    }
    Ok(())
}

/// `path` (absolute, normalised) with the symbolic links of its existing part resolved; the
/// part that does not exist yet (a lake's first run) is kept as written.
fn real_path(path: &Path) -> Result<PathBuf, String> {
    let mut missing: Vec<Component> = Vec::new();
    for existing in path.ancestors() {
        if existing.symlink_metadata().is_ok() {
            let real = std::fs::canonicalize(existing).map_err(|e| {
                format!(
                    "'{}': cannot resolve '{}' ({e}; a symbolic link to nowhere?)",
                    path.display(),
                    existing.display()
                )
            })?;
            return Ok(missing.iter().rev().fold(real, |p, c| p.join(c)));
        }
        if let Some(name) = existing.file_name() {
            missing.push(Component::Normal(name));
        }
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined(dir: &Path) -> Arc<Confinement> {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("data")).unwrap();
        Arc::new(Confinement::new(&root, &["data".into(), "s3://bucket/raw".into()], &[]).unwrap())
    }

    fn spec(lake: &str, path: &str) -> String {
        format!(
            "pipeline: p\nlake: {lake}\nsources:\n  - {{ name: s, format: json, path: \"{path}\" }}\n"
        )
    }

    fn error(c: &Arc<Confinement>, lake: &str, path: &str) -> Option<String> {
        c.admit(spec(lake, path), "p.yaml".into(), RunDate::Latest)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_database_source_reads_only_secrets_meant_for_specs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let c = confined(&dir);
        let admit = |postgres: &str| {
            let yaml = format!(
                "pipeline: p\nlake: lake\nsources:\n  - name: db\n    postgres: {{ table: t, {postgres} }}\n"
            );
            c.admit(yaml, "p.yaml".into(), RunDate::Latest)
                .err()
                .map(|e| e.to_string())
        };
        let url = "url: 'postgres://u@h/db'";
        assert_eq!(
            admit(&format!("{url}, password_env: MEDALLION_SECRET_DB")),
            None
        );
        assert_eq!(
            admit(&format!("{url}, password_file: data/db.secret")),
            None
        );
        let e = admit(&format!("{url}, password_env: AWS_SECRET_ACCESS_KEY")).unwrap();
        assert!(
            e.contains("sources[0].postgres.password_env: AWS_SECRET_ACCESS_KEY"),
            "{e}"
        );
        let e = admit("url: 'env:DATABASE_URL'").unwrap();
        assert!(e.contains("sources[0].postgres.url: DATABASE_URL"), "{e}");
        let e = admit(&format!("{url}, password_file: /etc/shadow")).unwrap();
        assert!(e.contains("sources[0].postgres.password_file"), "{e}");
    }

    #[test]
    fn paths_inside_pass_and_relative_ones_resolve_against_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let c = confined(&dir);
        let p = c
            .admit(
                spec("lake", "data/*.jsonl"),
                "p.yaml".into(),
                RunDate::Latest,
            )
            .unwrap();
        assert_eq!(p.lake_root, c.root().join("lake").display().to_string());
        assert_eq!(error(&c, "lake/deeper", "data/a/../b/*.jsonl"), None);
        assert_eq!(error(&c, "lake", "s3://bucket/raw/x/*.jsonl"), None);
        assert_eq!(error(&c, "lake", "s3://bucket/raw"), None);
    }

    #[test]
    fn escapes_are_refused_with_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let c = confined(&dir);
        for (lake, path, field, says) in [
            (
                "lake",
                "../../../../../../../../etc/*.conf",
                "sources[0].path",
                "'/etc/*.conf'",
            ),
            ("lake", "/etc/passwd", "sources[0].path", "/etc/passwd"),
            ("lake", "lake/x.jsonl", "sources[0].path", "allows sources"),
            ("/tmp/elsewhere", "data/x", "lake", "allows lakes"),
            (
                "lake",
                "s3://bucket/rawer/x",
                "sources[0].path",
                "s3://bucket/raw/",
            ),
            (
                "lake",
                "s3://bucket/raw/../secret",
                "sources[0].path",
                "dot segments",
            ),
            (
                "lake",
                "s3://bucket/raw/%2e%2e/secret",
                "sources[0].path",
                "encoded",
            ),
            ("s3://bucket/raw/lake", "data/x", "lake", "allows lakes"),
        ] {
            let e = error(&c, lake, path).unwrap_or_else(|| panic!("{lake} {path} passed"));
            assert!(e.contains(field) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn symbolic_links_out_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let c = confined(&dir);
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, c.root().join("data/link")).unwrap();
        std::os::unix::fs::symlink(&outside, c.root().join("lake")).unwrap();
        std::os::unix::fs::symlink(dir.join("nowhere"), c.root().join("dangling")).unwrap();
        let e = error(&c, "lake", "data/link/*.jsonl").unwrap();
        assert!(e.contains("through a symbolic link"), "{e}");
        assert!(e.contains("lake") && e.contains("allows lakes"), "{e}");
        let e = error(&c, "dangling/lake", "data/x").unwrap();
        assert!(e.contains("symbolic link to nowhere"), "{e}");
        let file = outside.join("f.jsonl");
        assert!(c.check_source_file(&file).is_err());
        assert!(c.check_source_file(&c.root().join("data/f.jsonl")).is_ok());
    }

    #[test]
    fn the_whole_file_system_is_not_a_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let e = Confinement::new(dir, &["/".into()], &[]).unwrap_err();
        assert!(e.contains("whole file system"), "{e}");
        assert!(Confinement::new(dir, &[], &["s3://b/x/../y".into()]).is_err());
    }
}
