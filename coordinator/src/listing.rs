//! The files a source names, and how bronze tells them apart.
//!
//! A file's identity (`_source_file` in bronze) is its path relative to the source's root:
//! the directory the source's path names, or, for a glob, the part before the first wildcard.
//! So a lake moved together with its data (another checkout, a volume mounted elsewhere, a
//! renamed bucket prefix) still knows which files it holds. Objects on object storage are
//! named the same way, by their key below the root. Symbolic links are followed, but each
//! real file is listed once (a link loop cannot repeat files); a confined pipeline's source
//! fails when a link leads out of where its sources may read; and nothing under the lake
//! itself ever matches a source, so a glob that covers the lake does not ingest its data files.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use medallion_lake::objects;
use medallion_pipeline::Pipeline;
use medallion_pipeline::spec::SourceSpec;

/// One file of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Where to read it: a local path, or an object's URL.
    pub location: String,
    /// Its identity: the path relative to the source's root, `/`-separated.
    pub id: String,
    /// Its size and version when listed: what tells a file changed in place.
    pub size: u64,
    /// An object's ETag (else its modification time); a local file's modification time.
    pub version: String,
    /// A confined pipeline's local file: its path without links, checked to be allowed.
    pub real: Option<String>,
}

/// What a source's path names.
#[derive(Debug)]
pub struct SourceListing {
    /// The directory (or URL prefix) identities are relative to.
    pub root: String,
    /// Sorted by identity.
    pub files: Vec<SourceFile>,
}

/// The files a source's path names: a file, every file in a directory, or a glob's matches
/// (`**` crosses directories); on object storage, an object, the objects directly under a
/// prefix, or a glob's matches.
pub async fn list_source_files(pipeline: &Pipeline, source: &SourceSpec) -> Result<SourceListing> {
    let location = pipeline.source_location(source);
    if objects::is_object_url(&location) {
        list_objects(pipeline, source, &location).await
    } else {
        list_local(pipeline, source, &location)
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The objects a source's URL names.
async fn list_objects(
    pipeline: &Pipeline,
    source: &SourceSpec,
    location: &str,
) -> Result<SourceListing> {
    let name = &source.name.value;
    let opts = pipeline.source_storage_options(source);
    let context = || format!("source '{name}'");
    let (prefix, listed) = if has_wildcard(location) {
        let fixed: Vec<&str> = location
            .split('/')
            .take_while(|c| !has_wildcard(c))
            .collect();
        let pattern = glob::Pattern::new(location)
            .with_context(|| format!("source '{name}': invalid glob '{location}'"))?;
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: !location.contains("**"),
            require_literal_leading_dot: false,
        };
        let prefix = format!("{}/", fixed.join("/"));
        // A pattern whose only wildcards are in its last part matches objects directly under
        // the prefix: list that level, not everything below it.
        let one_level = !location.contains("**") && location.split('/').count() == fixed.len() + 1;
        let listed = match one_level {
            true => objects::list_directory(&prefix, &opts).await,
            false => objects::list_objects(&prefix, &opts).await,
        }
        .with_context(context)?;
        if listed.is_empty() {
            bail!("source '{name}': no objects under '{prefix}'");
        }
        let matching = listed
            .into_iter()
            .filter(|o| pattern.matches_with(&o.url, options));
        (prefix, matching.collect())
    } else {
        // A prefix (the objects directly under it, as a directory's files), else one object.
        let prefix = format!("{}/", location.trim_end_matches('/'));
        let listed = objects::list_directory(&prefix, &opts)
            .await
            .with_context(context)?;
        let direct: Vec<_> = listed
            .into_iter()
            .filter(|o| !is_hidden_name(&o.relative))
            .collect();
        if !direct.is_empty() || location.ends_with('/') {
            (prefix, direct)
        } else if let Some(object) = objects::head_object(location, &opts)
            .await
            .with_context(context)?
        {
            let dir = location.rsplit_once('/').map_or("", |(dir, _)| dir);
            (format!("{dir}/"), vec![object])
        } else {
            bail!("source '{name}': no object '{location}' and no objects under '{prefix}'");
        }
    };
    // A templated path lists one interval's prefix; identities are relative to the part
    // before the template, as for files.
    let root = match pipeline.source_root_template(source) {
        Some(fixed) if prefix.starts_with(&format!("{fixed}/")) => format!("{fixed}/"),
        _ => prefix,
    };
    let lake = format!("{}/", pipeline.lake_root.trim_end_matches('/'));
    let mut listed: Vec<_> = listed
        .into_iter()
        .filter(|o| !o.url.starts_with(&lake))
        .collect();
    objects::fill_versions(&mut listed, &opts)
        .await
        .with_context(context)?;
    let files = listed
        .into_iter()
        .map(|o| SourceFile {
            id: o.url.strip_prefix(&root).unwrap_or(&o.relative).to_string(),
            location: o.url,
            size: o.size,
            version: o.version.unwrap_or_default(),
            real: None,
        })
        .collect();
    Ok(SourceListing {
        root: root.trim_end_matches('/').to_string(),
        files,
    })
}

/// The local files a source's path names.
fn list_local(pipeline: &Pipeline, source: &SourceSpec, location: &str) -> Result<SourceListing> {
    let name = &source.name.value;
    let (root, candidates) = if has_wildcard(location) {
        glob_matches(name, location)?
    } else {
        let path = PathBuf::from(location);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("source '{name}': cannot list '{location}'"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !is_hidden(p))
                .collect();
            entries.sort();
            (path, entries)
        } else if path.is_file() {
            let root = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            (root, vec![path])
        } else if path.exists() {
            bail!("source '{name}': '{location}' is not a regular file or a directory");
        } else {
            bail!("source '{name}': path '{location}' does not exist");
        }
    };
    // A templated path (`data/{{ ds }}/*.jsonl`) lists one interval's directory, but its
    // files are known relative to the part before the template, where intervals differ.
    let root = match pipeline.source_root_template(source).map(PathBuf::from) {
        Some(fixed) if root.starts_with(&fixed) => fixed,
        _ => root,
    };
    let real_root = std::fs::canonicalize(&root)
        .with_context(|| format!("source '{name}': cannot resolve '{}'", root.display()))?;
    let lake = medallion_lake::local_dir(&pipeline.lake_root)
        .and_then(|dir| std::fs::canonicalize(dir).ok());
    // Real path to the index of its file: each real file once.
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut files: Vec<SourceFile> = Vec::new();
    for path in candidates {
        let real = std::fs::canonicalize(&path)
            .with_context(|| format!("cannot resolve '{}'", path.display()))?;
        if lake.as_ref().is_some_and(|lake| real.starts_with(lake)) {
            continue;
        }
        let checked = match pipeline.confinement() {
            Some(confinement) => {
                confinement
                    .check_source_file(&real)
                    .map_err(|e| anyhow::anyhow!("source '{name}': {}: {e}", path.display()))?;
                Some(real.display().to_string())
            }
            None => None,
        };
        // A real file found again through a link keeps the identity of its path without
        // links, so renaming a link changes nothing.
        let direct = real.strip_prefix(&real_root).ok() == path.strip_prefix(&root).ok();
        let stat = std::fs::metadata(&real)
            .with_context(|| format!("source '{name}': cannot read '{}'", path.display()))?;
        let file = SourceFile {
            id: relative_id(&root, &path),
            location: path.display().to_string(),
            size: stat.len(),
            version: modified(&stat),
            real: checked,
        };
        match seen.get(&real) {
            Some(&i) if direct => files[i] = file,
            Some(_) => {}
            None => {
                seen.insert(real, files.len());
                files.push(file);
            }
        }
    }
    files.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(SourceListing {
        root: root.display().to_string(),
        files,
    })
}

/// A local file's version: its modification time, to the microsecond (RFC 3339).
fn modified(stat: &std::fs::Metadata) -> String {
    let time: chrono::DateTime<chrono::Utc> = match stat.modified() {
        Ok(t) => t.into(),
        Err(_) => return String::new(),
    };
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A glob's root (the part before its first wildcard) and the files under it that match.
fn glob_matches(name: &str, location: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
    let pattern = glob::Pattern::new(location)
        .with_context(|| format!("source '{name}': invalid glob '{location}'"))?;
    let root: PathBuf = Path::new(location)
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect();
    if !root.is_dir() {
        bail!(
            "source '{name}': directory '{}' does not exist",
            root.display()
        );
    }
    // Without `**`, a match lies exactly as deep as the pattern.
    let depth = if location.contains("**") {
        usize::MAX
    } else {
        Path::new(location).components().count() - root.components().count()
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let walk = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .max_depth(depth)
        .sort_by_file_name();
    let mut matches = Vec::new();
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.loop_ancestor().is_some() => continue,
            Err(e) => bail!("source '{name}': cannot list '{}': {e}", root.display()),
        };
        if entry.file_type().is_file() && pattern.matches_path_with(entry.path(), options) {
            matches.push(entry.into_path());
        }
    }
    Ok((root, matches))
}

/// `path` relative to `root`, `/`-separated.
fn relative_id(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| is_hidden_name(&n.to_string_lossy()))
}

/// Names that tools keep for themselves (`.tmp`, `_SUCCESS`, `_delta_log`).
fn is_hidden_name(name: &str) -> bool {
    name.starts_with(['.', '_'])
}

/// A file's identity as an older version recorded it (its absolute path), made relative to
/// `root` when it lies under it, so tables ingested before identities were relative do not
/// ingest their files again.
pub fn legacy_id(root: &Path, recorded: &str) -> Option<String> {
    let path = Path::new(recorded);
    (path.is_absolute() && path.starts_with(root)).then(|| relative_id(root, path))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use medallion_pipeline::{Confinement, RunDate};

    use super::*;

    /// A confined pipeline's files carry their path without links, which the executor checks
    /// the file it opens against; an unconfined one's do not.
    #[tokio::test]
    async fn confined_files_carry_the_path_they_were_checked_at() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("data/2026")).unwrap();
        std::fs::write(root.join("data/2026/a.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(root.join("data/2026"), root.join("data/latest")).unwrap();
        let yaml = "pipeline: p\nlake: lake\nsources:\n  - name: s\n    path: data/latest/*.jsonl\n    \
                    format: json\nbronze:\n  - name: b\n    source: s\n";
        let confinement = Arc::new(Confinement::new(&root, &[], &[]).unwrap());
        let pipeline = confinement
            .admit(yaml.into(), "p.yaml".into(), RunDate::Latest)
            .unwrap();
        let listing = list_source_files(&pipeline, &pipeline.spec.sources[0])
            .await
            .unwrap();
        let real = std::fs::canonicalize(root.join("data/2026/a.jsonl")).unwrap();
        assert_eq!(listing.files.len(), 1);
        assert_eq!(listing.files[0].real.as_deref(), real.to_str());
        assert!(listing.files[0].location.contains("latest"));

        let free =
            Pipeline::parse_for(yaml.into(), "p.yaml".into(), root, RunDate::Latest).unwrap();
        let listing = list_source_files(&free, &free.spec.sources[0])
            .await
            .unwrap();
        assert_eq!(listing.files[0].real, None);
    }
}
