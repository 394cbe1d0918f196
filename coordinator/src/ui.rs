//! The web UI: pipelines, their graph, runs (live while they run), tables and executors, and
//! the actions a viewer's role allows (trigger, cancel, pause, resume, backfill).
//!
//! Every coordinator serves it on its own port (`--ui-listen`), and `medallion ui <spec>`
//! serves it for a lake run in embedded mode; both draw the same pages from a [`Console`].
//! Pages are HTML drawn on the server ([`pages`]), with one small script that refreshes a
//! running run's page every second; no JavaScript toolchain is involved.
//!
//! Sign-in is the client API's: a viewer gives a token once, kept in an `HttpOnly`,
//! `SameSite=Strict` cookie (or sends `Authorization: Bearer`), and the coordinator's
//! console makes every call to the client API with it, so roles, pipeline grants and the
//! audit log apply as they do to the CLI. Forms are refused when the browser says they come
//! from another site.
//!
//! ```text
//! medallion-coordinator --ui-listen 0.0.0.0:7080 ...   # http://<coordinator>:7080/
//! medallion ui examples/ecommerce/pipeline.yaml        # http://127.0.0.1:7080/
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};
use maud::Markup;
use medallion_pipeline::TableRef;
use medallion_proto::RunState;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub mod cluster;
pub mod console;
pub mod graph;
pub mod lake;
pub mod pages;

pub use cluster::ClusterConsole;
pub use console::{Action, Console, UiError, Viewer};
pub use lake::LakeConsole;

/// The cookie that holds a signed-in viewer's token.
const COOKIE: &str = "medallion_token";

/// Runs a pipeline page lists; the newest of them gives each table's state.
const RUNS_LISTED: usize = 200;

/// Serves the UI on `listen` until `stop`, over TLS when given an acceptor; returns the
/// address bound (port 0: any free one).
pub async fn serve(
    listen: SocketAddr,
    console: Arc<dyn Console>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the web UI"))?;
    let address = listener.local_addr()?;
    let app = router(console, tls.is_some());
    let stopped = stop.cancelled_owned();
    tokio::spawn(async move {
        let served = match tls {
            Some(acceptor) => {
                let incoming = medallion_cluster::tls::incoming(listener, acceptor);
                let listener = TlsListener { incoming, address };
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the web UI stopped");
        }
    });
    tracing::info!(%address, "web UI serving");
    Ok(address)
}

/// TLS connections for axum, their handshakes done as on the gRPC port.
struct TlsListener {
    incoming: ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    address: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr();
                    return (stream, peer.unwrap_or(self.address));
                }
                // Logged where the handshake failed.
                Some(Err(_)) => continue,
                // No more connections: the server is stopping.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.address)
    }
}

/// The UI's routes over `console`; `secure`: served over TLS (the sign-in cookie is then
/// never sent over plain HTTP).
pub fn router(console: Arc<dyn Console>, secure: bool) -> Router {
    Router::new()
        .route("/", get(pipelines_page))
        .route("/pipelines/{name}", get(pipeline_page))
        .route("/pipelines/{name}/tables/{table}", get(table_page))
        .route("/runs", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/live", get(run_live))
        .route("/executors", get(executors_page))
        .route("/actions", post(act))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/ui.css", get(css))
        .route("/assets/ui.js", get(js))
        .layer(middleware::from_fn(flash))
        .layer(middleware::map_response(secure_headers))
        .layer(Extension(Transport { secure }))
        .with_state(console)
}

type Ui = State<Arc<dyn Console>>;

/// How the UI is served, for the sign-in cookie's attributes.
#[derive(Clone, Copy)]
struct Transport {
    secure: bool,
}

/// A page that could not be drawn: the error page (or the sign-in form) with its status.
struct Failure(UiError);

impl<E: Into<UiError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let message = self.0.to_string();
        let content = match self.0 {
            UiError::Unauthenticated(_) => pages::login(&message),
            _ => pages::error(&message),
        };
        let title = status.canonical_reason().unwrap_or("Error");
        (status, pages::page(title, None, None, content)).into_response()
    }
}

type Page = Result<Markup, Failure>;

/// What an action said, shown once on the page it returns to. It travels in a short-lived
/// cookie, not in the URL, so that a link cannot make a page say something.
#[derive(Clone, Default)]
struct Said(Option<String>);

/// The cookie that carries [`Said`] across the redirect after an action.
const SAID_COOKIE: &str = "medallion_said";

/// Hands the flash message to the page and clears it once shown.
async fn flash(mut request: axum::extract::Request, next: middleware::Next) -> Response {
    let said = cookie(request.headers(), SAID_COOKIE).map(|v| {
        let decoded = percent_encoding::percent_decode_str(&v).decode_utf8_lossy();
        decoded.into_owned()
    });
    let shown = said.is_some();
    request.extensions_mut().insert(Said(said));
    let mut response = next.run(request).await;
    if shown && response.status().is_success() {
        let clear = format!("{SAID_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
        if let Ok(clear) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, clear);
        }
    }
    response
}

fn viewer(console: &dyn Console, headers: &HeaderMap) -> Result<Viewer, Failure> {
    Ok(console.viewer(token(headers).as_deref())?)
}

/// The bearer token of a request: its `Authorization` header, else the sign-in cookie.
fn token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        return Some(token.trim().to_string());
    }
    cookie(headers, COOKIE)
}

/// The value of the cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_string())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn pipelines_page(
    State(console): Ui,
    headers: HeaderMap,
    Extension(said): Extension<Said>,
) -> Page {
    let viewer = viewer(&*console, &headers)?;
    let pipelines = console.pipelines(&viewer).await?;
    let content = pages::pipelines(&viewer, console.acts(), &pipelines, now());
    Ok(pages::page(
        "Pipelines",
        Some(&viewer),
        said.0.as_deref(),
        content,
    ))
}

async fn pipeline_page(
    State(console): Ui,
    Path(name): Path<String>,
    headers: HeaderMap,
    Extension(said): Extension<Said>,
) -> Page {
    let viewer = viewer(&*console, &headers)?;
    let pipeline = console.pipeline(&viewer, &name).await?;
    let infos = console.pipelines(&viewer).await?;
    let info = infos
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| UiError::NotFound(format!("no pipeline '{name}'")))?;
    let mut runs = console.runs(&viewer, RUNS_LISTED).await?;
    runs.retain(|r| r.pipeline == name);
    runs.truncate(10);
    let latest = runs.first();
    let running = latest.is_some_and(|r| matches!(r.state(), RunState::Queued | RunState::Running));
    let reports = latest.map(|r| r.tables()).unwrap_or_default();
    let order = pipeline.dag.topological_order().unwrap_or_default();
    let rows = lake::row_counts(&pipeline, &order).await;
    let tables: Vec<pages::TableState> = order
        .iter()
        .zip(rows)
        .map(|(table, rows)| {
            let name = table.to_string();
            let fresh = info.tables.iter().find(|t| t.table == name);
            let committed = fresh.filter(|f| f.committed_ms > 0);
            pages::TableState {
                table: table.clone(),
                report: reports.iter().find(|r| r.table == name),
                version: committed.map(|f| f.version),
                committed_ms: committed.map_or(0, |f| f.committed_ms),
                rows,
            }
        })
        .collect();
    let view = pages::PipelineView {
        info: &info,
        pipeline: &pipeline,
        tables: &tables,
        running,
        runs: &runs,
    };
    let content = pages::pipeline(&viewer, console.acts(), &view, now());
    let title = format!("Pipeline {name}");
    Ok(pages::page(
        &title,
        Some(&viewer),
        said.0.as_deref(),
        content,
    ))
}

#[derive(Deserialize)]
struct At {
    version: Option<u64>,
}

async fn table_page(
    State(console): Ui,
    Path((name, table)): Path<(String, String)>,
    Query(at): Query<At>,
    headers: HeaderMap,
) -> Page {
    let viewer = viewer(&*console, &headers)?;
    let pipeline = console.pipeline(&viewer, &name).await?;
    let table_ref: TableRef = table
        .parse()
        .ok()
        .filter(|t| pipeline.dag.contains(t))
        .ok_or_else(|| UiError::NotFound(format!("pipeline '{name}' has no table '{table}'")))?;
    let view = lake::table_view(&pipeline, &table_ref, at.version).await?;
    let content = pages::table(&name, &table, &view, now());
    Ok(pages::page(&table, Some(&viewer), None, content))
}

async fn runs_page(State(console): Ui, headers: HeaderMap) -> Page {
    let viewer = viewer(&*console, &headers)?;
    let runs = console.runs(&viewer, RUNS_LISTED).await?;
    Ok(pages::page(
        "Runs",
        Some(&viewer),
        None,
        pages::runs(&runs, now()),
    ))
}

async fn run_page(
    State(console): Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
    Extension(said): Extension<Said>,
) -> Page {
    let viewer = viewer(&*console, &headers)?;
    let run = console.run(&viewer, &id).await?;
    // A run of a spec submitted once has no deployed pipeline: its page lists only the
    // tables finished.
    let pipeline = console.pipeline(&viewer, &run.pipeline).await.ok();
    let content = pages::run(&viewer, console.acts(), &run, pipeline.as_deref(), now());
    let title = format!("Run {id}");
    Ok(pages::page(
        &title,
        Some(&viewer),
        said.0.as_deref(),
        content,
    ))
}

/// The changing part of a run's page, which the page's script fetches every second while
/// the run runs; `X-Run-State` says when to stop.
async fn run_live(
    State(console): Ui,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let viewer = viewer(&*console, &headers)?;
    let run = console.run(&viewer, &id).await?;
    let pipeline = console.pipeline(&viewer, &run.pipeline).await.ok();
    let body = pages::run_body(&viewer, console.acts(), &run, pipeline.as_deref(), now());
    let live = matches!(run.state(), RunState::Queued | RunState::Running);
    let state = if live { "running" } else { "ended" };
    Ok(([("x-run-state", state)], body).into_response())
}

async fn executors_page(State(console): Ui, headers: HeaderMap) -> Page {
    let viewer = viewer(&*console, &headers)?;
    let executors = console.executors(&viewer).await?;
    let content = pages::executors(executors.as_deref(), now());
    Ok(pages::page("Executors", Some(&viewer), None, content))
}

/// An action's form: which action, on what, and the page to go back to.
#[derive(Deserialize)]
struct ActionForm {
    action: String,
    #[serde(default)]
    pipeline: String,
    #[serde(default)]
    run_id: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    back: String,
}

impl ActionForm {
    fn action(self) -> Result<Action, UiError> {
        let pipeline = self.pipeline;
        Ok(match self.action.as_str() {
            "trigger" => Action::Trigger { pipeline },
            "pause" => Action::Pause { pipeline },
            "resume" => Action::Resume { pipeline },
            "cancel" => Action::Cancel {
                run_id: self.run_id,
            },
            "backfill" => Action::Backfill {
                pipeline,
                from: self.from,
                to: self.to,
            },
            other => return Err(UiError::BadRequest(format!("no action '{other}'"))),
        })
    }
}

async fn act(
    State(console): Ui,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    same_site(&headers)?;
    let viewer = viewer(&*console, &headers)?;
    let back = local_path(&form.back).unwrap_or("/").to_string();
    let said = console.act(&viewer, form.action()?).await?;
    let said = percent_encoding::utf8_percent_encode(&said, percent_encoding::NON_ALPHANUMERIC);
    let cookie = format!("{SAID_COOKIE}={said}; Path=/; HttpOnly; SameSite=Strict; Max-Age=60");
    let cookie = HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?;
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&back)).into_response())
}

/// Refuses a form another site made the browser send (the cookie is `SameSite=Strict`,
/// but without tokens there is no cookie to withhold).
fn same_site(headers: &HeaderMap) -> Result<(), Failure> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(site, Some("cross-site" | "same-site")) {
        return Err(UiError::Forbidden("a form from another site".into()).into());
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let (Some(origin), Some(host)) = (origin, host) {
        let from = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin != "null" && from != host {
            return Err(UiError::Forbidden(format!("a form from {origin}")).into());
        }
    }
    Ok(())
}

/// `path` if it is a path on this site (not `//elsewhere`, not a URL).
fn local_path(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or_default();
    (path.starts_with('/') && !path.starts_with("//") && !path.contains('\\')).then_some(path)
}

async fn login_page(State(console): Ui, headers: HeaderMap) -> Response {
    match console.viewer(token(&headers).as_deref()) {
        // Already signed in, or nothing to sign in to.
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => Failure(e).into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(console): Ui,
    Extension(transport): Extension<Transport>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, Failure> {
    same_site(&headers)?;
    let token = form.token.trim();
    // A cookie value holds printable ASCII but `;`, `,`, `"`, `\` and spaces.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b))
    {
        return Err(UiError::Unauthenticated("that is not a token".into()).into());
    }
    console.viewer(Some(token))?;
    let secure = if transport.secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let cookie = HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?;
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

async fn logout(headers: HeaderMap) -> Result<Response, Failure> {
    same_site(&headers)?;
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

async fn css() -> impl IntoResponse {
    let css = include_str!("ui/assets/ui.css");
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], css)
}

async fn js() -> impl IntoResponse {
    let js = include_str!("ui/assets/ui.js");
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        js,
    )
}

/// Headers every answer carries: only this site's scripts and styles (the timeline's bars
/// are inline `style` attributes), no framing, no sniffing, no referrer to other sites.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let policy = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                  frame-ancestors 'none'; form-action 'self'";
    for (name, value) in [
        ("content-security-policy", policy),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; medallion_token=abc; b=2"),
        );
        assert_eq!(token(&headers).as_deref(), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(token(&headers).as_deref(), Some("xyz"));
    }

    #[test]
    fn forms_from_other_sites_and_redirects_elsewhere_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("ui:7080"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://ui:7080"));
        assert!(same_site(&headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_site(&headers).is_err());
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_site(&headers).is_err());
        assert_eq!(local_path("/runs/r1?x=1"), Some("/runs/r1"));
        assert_eq!(local_path("//evil.example/"), None);
        assert_eq!(local_path("https://evil.example/"), None);
    }
}
