//! A throwaway PostgreSQL cluster on a free loopback port, from Debian's `postgresql` package
//! (`scripts/deps.sh` installs it): `initdb` into a temporary directory, password
//! authentication over TCP, killed with the test.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{Proc, free_port, wait_for};

/// The cluster's superuser and password.
pub const USER: &str = "medallion";
pub const PASSWORD: &str = "s3cret-for-tests";

pub struct Postgres {
    pub proc: Proc,
    /// Its data directory, removed with it.
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// `initdb` and `postgres` run as the `postgres` user when the tests run as root (the
    /// server refuses root), as the caller otherwise.
    pub fn start() -> Self {
        let bin = server_bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = server_user();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if let Some((uid, gid)) = owner {
            let chown = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success());
        }
        let as_owner = |command: &mut Command| {
            if let Some((uid, gid)) = owner {
                command.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "-E",
                "UTF8",
                "--no-sync",
                "--auth=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        as_owner(&mut initdb);
        let out = crate::output(&mut initdb);
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "fsync=off", "-c", "max_connections=200"]);
        as_owner(&mut server);
        let log = dir.path().join("postgres.log");
        let proc = Proc::spawn("postgres", port, log, &mut server);
        let pg = Self { proc, _dir: dir };
        wait_for("postgres", Duration::from_secs(60), || {
            pg.proc.listening() && pg.try_psql("SELECT 1").is_ok()
        });
        pg
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// The URL a spec names it by (no password: that comes from the environment or a file).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port())
    }

    /// Runs `sql` with `psql` (unaligned, tuples only); its output, which must be a success.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
    }

    fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = crate::output(
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    &self.url(),
                ])
                .args(["-c", sql])
                .env("PGPASSWORD", PASSWORD),
        );
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// The server's log, for a failing assertion.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// The newest PostgreSQL server Debian installed (`/usr/lib/postgresql/<version>/bin`).
fn server_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL's server is missing: scripts/test installs it (apt-get install postgresql)",
        )
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// The `postgres` account's ids when running as root, which the server refuses to run as.
fn server_user() -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    if id("-u")? != 0 {
        return None;
    }
    let of = |flag: &str| {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    Some((of("-u")?, of("-g")?))
}
