//! TLS on Medallion's gRPC links (rustls, the `ring` provider).
//!
//! Every process may serve TLS (`--tls-cert`, `--tls-key`) and trusts the servers it calls
//! when a CA it was given (`--tls-ca`) signed their certificates; it presents its own
//! certificate when it calls, so a server started with `--tls-client-auth` (mutual TLS) can
//! refuse callers the CA did not sign. A server reads its certificate and key again when their
//! files change (a renewed Kubernetes Secret or cert-manager Certificate): connections made
//! after that see the new certificate, without a restart. URLs with `https://` use TLS,
//! `http://` plaintext.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// This process's certificate and the CA it trusts: what it calls others with, and serves
/// with when it is a server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) this process presents: to its callers as a server, to the
    /// servers it calls when they ask for one (mutual TLS). Read again when it changes.
    #[arg(
        id = "tls_cert",
        long = "tls-cert",
        env = "MEDALLION_TLS_CERT",
        requires = "tls_key",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(
        id = "tls_key",
        long = "tls-key",
        env = "MEDALLION_TLS_KEY",
        requires = "tls_cert",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// PEM certificates of the CA that signs the servers this process calls (`https://`
    /// URLs), and, with `--tls-client-auth`, its callers.
    #[arg(
        id = "tls_ca",
        long = "tls-ca",
        env = "MEDALLION_TLS_CA",
        global = true
    )]
    pub ca: Option<PathBuf>,
    /// The name servers' certificates are checked against, instead of the host of their URL:
    /// for servers reached by an address no certificate names (pods by their IP).
    #[arg(
        id = "tls_server_name",
        long = "tls-server-name",
        env = "MEDALLION_TLS_SERVER_NAME",
        global = true
    )]
    pub server_name: Option<String>,
}

impl TlsArgs {
    /// How this process calls servers.
    pub fn client(&self) -> Result<ClientTls> {
        let Some(ca) = &self.ca else {
            return Ok(ClientTls(None));
        };
        let pem = read(ca, "--tls-ca")?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let identity = Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
            config = config.identity(identity);
        }
        Ok(ClientTls(Some(config)))
    }

    /// How this process serves: `None` without a certificate (plaintext). With
    /// `client_auth`, callers must present a certificate `--tls-ca` signed.
    pub fn server(&self, client_auth: bool) -> Result<Option<TlsAcceptor>> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            if client_auth {
                bail!("--tls-client-auth needs --tls-cert and --tls-key");
            }
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Reloading::load(cert, key, provider.clone())?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = if client_auth {
            let ca = self
                .ca
                .as_ref()
                .context("--tls-client-auth needs --tls-ca: the CA that signs callers")?;
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).context("--tls-ca")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("--tls-ca")?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// How a process calls servers: TLS for `https://` URLs when it was given a CA.
#[derive(Clone, Debug, Default)]
pub struct ClientTls(Option<ClientTlsConfig>);

impl ClientTls {
    /// The TLS configuration calls use, if TLS is configured.
    pub fn config(&self) -> Option<ClientTlsConfig> {
        self.0.clone()
    }

    /// An endpoint for `url`, with TLS when the URL says `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("'{url}' is not a URL"))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let config = self.0.clone().with_context(|| {
            format!("{url}: an https:// URL needs the CA that signs its certificate (--tls-ca)")
        })?;
        endpoint
            .tls_config(config)
            .with_context(|| format!("TLS for {url}"))
    }
}

/// Accepts TLS connections on `listener`, each handshake on its own task so a slow or
/// hostile client cannot hold up the others; refused handshakes are logged (a caller
/// without a valid certificate, plaintext sent to a TLS port).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await;
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A server certificate read again when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    changed: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

impl Reloading {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self> {
        let loaded = Loaded {
            changed: changed(cert, key),
            key: Arc::new(certified_key(cert, key, &provider)?),
        };
        Ok(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: Mutex::new(loaded),
        })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let now = changed(&self.cert, &self.key);
        if now != current.changed {
            // A file half rewritten fails to parse: keep serving the old certificate and try
            // again at the next connection.
            match certified_key(&self.cert, &self.key, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *current = Loaded {
                        changed: now,
                        key: Arc::new(key),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "TLS certificate not reloaded")
                }
            }
        }
        Some(current.key.clone())
    }
}

fn changed(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: no PEM private key", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .context("--tls-key")?;
    Ok(CertifiedKey::new(chain, signing))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}
