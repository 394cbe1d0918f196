//! The way from this process's Ballista executor to the leader's Ballista scheduler.
//!
//! Ballista's executor takes one fixed scheduler address, but the scheduler runs in whichever
//! coordinator leads and moves with the leadership. So the Ballista executor connects to a
//! loopback port, and each connection there goes on to the scheduler the leader publishes in
//! etcd at that moment. When the leader changes, open connections are cut; Ballista connects
//! again and reaches the new scheduler, which learns the executor from its next poll.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use etcd_client::Client;
use medallion_cluster::etcd::Change;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Starts following the scheduler published at `key`; returns the loopback address that
/// leads to it.
pub async fn start(etcd: Client, key: String, stop: CancellationToken) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the loopback port to the Ballista scheduler")?;
    let local = listener.local_addr()?;
    let (published, scheduler) = watch::channel(None::<String>);
    let value = |kv: &etcd_client::KeyValue| kv.value_str().ok().map(str::to_string);
    tokio::spawn(medallion_cluster::etcd::follow(
        etcd,
        key,
        stop.clone(),
        move |change| {
            let now = match change {
                Change::All(kvs) => kvs.first().and_then(value),
                Change::Put(kv) => value(kv),
                Change::Deleted(_) => None,
            };
            published.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    tracing::info!(
                        scheduler = now.as_deref(),
                        "the leader's Ballista scheduler"
                    );
                    *current = now;
                }
                changed
            });
        },
    ));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(forward(stream, scheduler.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "accepting a Ballista connection"),
            }
        }
    });
    Ok(local)
}

/// Joins one Ballista connection to the current scheduler until either side closes it or the
/// scheduler changes.
async fn forward(mut local: TcpStream, mut scheduler: watch::Receiver<Option<String>>) {
    let address = match scheduler.wait_for(Option::is_some).await {
        Ok(address) => address.clone().expect("waited for an address"),
        Err(_) => return,
    };
    let mut remote = match TcpStream::connect(&address).await {
        Ok(remote) => remote,
        Err(e) => {
            tracing::warn!(scheduler = address, error = %e, "cannot reach the Ballista scheduler");
            return;
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut local, &mut remote) => {}
        _ = scheduler.changed() => {}
    }
}
