//! TLS on Medallion's gRPC links (rustls, the `ring` provider).
//!
//! Every process may serve TLS (`--tls-cert`, `--tls-key`) and trusts the servers it calls
//! when a CA it was given (`--tls-ca`) signed their certificates; it presents its own
//! certificate when it calls, so a server started with `--tls-client-auth` (mutual TLS) can
//! refuse callers the CA did not sign. A server reads its certificate and key again when their
//! files change (a renewed Kubernetes Secret or cert-manager Certificate): connections made
//! after that see the new certificate, without a restart; a caller likewise presents its
//! renewed certificate from its next connection on. URLs with `https://` use TLS,
//! `http://` plaintext.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    /// How this process calls servers. Its certificate is read again when its files change,
    /// like a server's, so a long-running caller presents the renewed one at its next
    /// connection.
    pub fn client(&self) -> Result<ClientTls> {
        let Some(ca) = &self.ca else {
            return Ok(ClientTls(None));
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert).context("--tls-ca")?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_cert_resolver(Arc::new(Reloading::load(cert, key, provider)?))
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = match &self.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .with_context(|| format!("--tls-server-name '{name}' is not a host name"))?,
            ),
            None => None,
        };
        Ok(ClientTls(Some(Arc::new(Dialer {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))))
    }

    /// The same, as the fixed configuration etcd-client takes (read once: the etcd link
    /// does not see a renewed certificate until the process restarts).
    pub fn tonic_config(&self) -> Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let pem = read(ca, "--tls-ca")?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let identity = Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?);
            config = config.identity(identity);
        }
        Ok(Some(config))
    }

    /// How this process serves: `None` without a certificate (plaintext). With
    /// `client_auth`, callers must present a certificate `--tls-ca` signed.
    pub fn server(&self, client_auth: bool) -> Result<Option<TlsAcceptor>> {
        self.acceptor(client_auth, b"h2")
    }

    /// How a web page is served (HTTP/1.1) with the same certificate: browsers present none,
    /// so callers are not asked for one.
    pub fn web(&self) -> Result<Option<TlsAcceptor>> {
        self.acceptor(false, b"http/1.1")
    }

    fn acceptor(&self, client_auth: bool, protocol: &[u8]) -> Result<Option<TlsAcceptor>> {
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
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// How a process calls servers: TLS for `https://` URLs when it was given a CA.
#[derive(Clone, Default)]
pub struct ClientTls(Option<Arc<Dialer>>);

impl ClientTls {
    /// Where to call `url`: TLS when the URL says `https://`. Set timeouts and keep-alive
    /// on its `endpoint`, then connect.
    pub fn target(&self, url: &str) -> Result<Target> {
        let Some(rest) = url.strip_prefix("https://") else {
            let endpoint = Endpoint::from_shared(url.to_string())
                .with_context(|| format!("'{url}' is not a URL"))?;
            return Ok(Target {
                endpoint,
                tls: None,
            });
        };
        let dialer = self.0.clone().with_context(|| {
            format!("{url}: an https:// URL needs the CA that signs its certificate (--tls-ca)")
        })?;
        // tonic does TLS only with a fixed certificate, so our connector does it and tonic
        // sees a plain `http://` URL (the `:scheme` it sends; servers do not look at it).
        let endpoint = Endpoint::from_shared(format!("http://{rest}"))
            .with_context(|| format!("'{url}' is not a URL"))?;
        let host = endpoint.uri().host().unwrap_or_default();
        let server_name = match &dialer.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .with_context(|| format!("{url}: '{host}' is not a host name"))?,
        };
        Ok(Target {
            endpoint,
            tls: Some((dialer, server_name)),
        })
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ClientTls(on)"
        } else {
            "ClientTls(off)"
        })
    }
}

/// The TLS half of a caller: its rustls configuration and the name servers must have.
struct Dialer {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// A server to call, before connecting.
pub struct Target {
    pub endpoint: Endpoint,
    tls: Option<(Arc<Dialer>, ServerName<'static>)>,
}

impl Target {
    /// A channel that connects at its first call, and again after the connection drops.
    pub fn connect_lazy(self) -> Channel {
        match self.tls {
            None => self.endpoint.connect_lazy(),
            Some(tls) => self.endpoint.connect_with_connector_lazy(dial(tls)),
        }
    }

    /// A channel connected now.
    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        match self.tls {
            None => self.endpoint.connect().await,
            Some(tls) => self.endpoint.connect_with_connector(dial(tls)).await,
        }
    }
}

/// Opens a TCP connection to the URI's host and port and does the TLS handshake on it.
fn dial(
    (dialer, server_name): (Arc<Dialer>, ServerName<'static>),
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let (dialer, server_name) = (dialer.clone(), server_name.clone());
        async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = dialer.connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        }
    })
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

/// A certificate (a server's, or a caller's for mutual TLS) read again when its files change.
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

impl Reloading {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
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

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Reloading {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
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
