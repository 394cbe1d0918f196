//! Where queries spill to disk and source objects are copied to be read, and removing it.
//!
//! DataFusion removes its spill files when its runtime is dropped, which a process stopped by
//! a signal never does. So each process spills under a directory of its own,
//! `<tmp>/medallion-spill-<pid>`: it is removed on a graceful stop (SIGINT, SIGTERM), and a
//! process killed outright leaves it for the next one, which removes the directories of
//! processes no longer alive.

use std::path::{Path, PathBuf};

const PREFIX: &str = "medallion-spill-";

/// This process's spill directory.
#[derive(Debug)]
pub(crate) struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    /// Creates the directory, after removing those of processes that are gone.
    pub(crate) fn create() -> std::io::Result<Self> {
        let tmp = std::env::temp_dir();
        remove_stale(&tmp);
        let path = tmp.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes every spill file of this process (queries still running lose theirs).
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove spill files");
        }
    }
}

/// Removes the spill directories of processes that no longer run.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
