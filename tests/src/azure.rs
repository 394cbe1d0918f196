//! Azurite, the Azure Storage emulator (npm; `scripts/test` installs it once into
//! `~/.cache/medallion-tools`), on a free loopback port, for the `az://` tests. Containers
//! are made and blobs put through Python's azure-storage-blob, a client independent of ours.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::free_port;
use crate::{Workspace, python};

/// Azurite's one account and its published key (the emulator's, not a secret).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service, stopped when dropped.
pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
}

impl Azurite {
    /// Azurite keeping its blobs under `root`.
    pub fn start(root: &Path) -> Self {
        let binary = std::env::var("MEDALLION_AZURITE").map_or_else(
            |_| {
                let home = std::env::var("HOME").unwrap_or_default();
                PathBuf::from(home)
                    .join(".cache/medallion-tools/azurite/node_modules/.bin/azurite-blob")
            },
            PathBuf::from,
        );
        assert!(
            binary.exists(),
            "{} is missing: scripts/test installs it (need_azure_emulator in scripts/deps.sh)",
            binary.display()
        );
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(root)
            .args(["--silent", "--skipApiVersionCheck"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "azurite did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};\
             BlobEndpoint={}/{ACCOUNT};",
            self.endpoint
        )
    }

    /// Runs azure-storage-blob code with `blobs`, a client of this server, and `args`.
    fn python(&self, code: &str, args: &[&str]) {
        let script = format!(
            "import sys, os\n\
             from azure.storage.blob import BlobServiceClient\n\
             blobs = BlobServiceClient.from_connection_string(sys.argv[1])\n\
             args = sys.argv[2:]\n{code}"
        );
        let out = crate::output(
            Command::new(python())
                .args(["-c", &script, &self.connection_string()])
                .args(args),
        );
        assert!(
            out.status.success(),
            "azure-storage-blob failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_container(&self, container: &str) {
        self.python("blobs.create_container(args[0])", &[container]);
    }

    /// Puts every file under the local directory `dir` as a blob under `container/prefix/`.
    pub fn upload(&self, dir: &Path, container: &str, prefix: &str) {
        let code = "root, container, prefix = args\n\
             c = blobs.get_container_client(container)\n\
             for d, _, files in os.walk(root):\n    \
                 for f in files:\n        \
                     p = os.path.join(d, f)\n        \
                     with open(p, 'rb') as data:\n            \
                         c.upload_blob(prefix + '/' + os.path.relpath(p, root), data, overwrite=True)";
        self.python(code, &[dir.to_str().unwrap(), container, prefix]);
    }

    /// A spec's storage options for the emulator: no credentials (those come from the
    /// environment, see [`Azurite::into_env`]).
    pub fn endpoint_options(&self) -> Value {
        json!({ "AZURE_STORAGE_USE_EMULATOR": "true", "AZURE_ALLOW_HTTP": "true" })
    }

    /// The storage options of the independent readers: with the account, and where the
    /// emulator is (`delta_check.py` moves `AZURITE_BLOB_STORAGE_URL` to its environment).
    pub fn reader_options(&self) -> Value {
        json!({
            "azure_storage_account_name": ACCOUNT,
            "azure_storage_account_key": ACCOUNT_KEY,
            "azure_storage_use_emulator": "true",
            "azure_allow_http": "true",
            "AZURITE_BLOB_STORAGE_URL": self.endpoint,
        })
    }

    /// Gives every process of `ws` the account's credentials and where the emulator is, in
    /// the environment.
    pub fn into_env(&self, ws: &Workspace) {
        ws.set_env("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT);
        ws.set_env("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY);
        ws.set_env("AZURITE_BLOB_STORAGE_URL", &self.endpoint);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
