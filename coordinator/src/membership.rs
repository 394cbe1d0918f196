//! The live executors and their free slots.
//!
//! [`Members`] is the coordinator's view; what feeds it is separate: in a cluster,
//! [`Members::follow`] tracks `<prefix>/executors/<id>`, which each executor keeps alive under
//! its lease; unit tests call [`Members::join`] and [`Members::leave`]. An executor whose key
//! goes (lease expired or revoked) is gone at once: its running calls are abandoned and their
//! tasks rescheduled. How a member is called is an [`ExecutorLink`]: gRPC, or a fake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use etcd_client::{Client, KeyValue};
use medallion_cluster::etcd::Change;
use medallion_cluster::{ClientTls, Keys};
use medallion_proto::executor_client::ExecutorClient;
use medallion_proto::{ExecutorInfo, Task, TaskResult};
use prost::Message;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Task results list every file written; far below this in practice.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How the coordinator calls one executor (see the `Executor` service in the .proto for what
/// its answers mean).
#[async_trait]
pub trait ExecutorLink: Send + Sync {
    async fn run_task(&self, task: Task) -> Result<TaskResult, tonic::Status>;
}

/// Makes the link to a newly registered executor.
pub type Connect = dyn Fn(&ExecutorInfo) -> Result<Arc<dyn ExecutorLink>> + Send + Sync;

/// An executor reached over gRPC at its registered address.
struct GrpcLink(ExecutorClient<Channel>);

impl GrpcLink {
    fn connect(tls: &ClientTls, info: &ExecutorInfo) -> Result<Arc<dyn ExecutorLink>> {
        let mut target = tls.target(&info.address)?;
        target.endpoint = target
            .endpoint
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = target.connect_lazy();
        Ok(Arc::new(Self(
            ExecutorClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )))
    }
}

#[async_trait]
impl ExecutorLink for GrpcLink {
    async fn run_task(&self, task: Task) -> Result<TaskResult, tonic::Status> {
        Ok(self.0.clone().run_task(task).await?.into_inner())
    }
}

/// One registered executor and the coordinator's view of its slots.
pub struct Member {
    pub info: ExecutorInfo,
    pub(crate) link: Arc<dyn ExecutorLink>,
    slots: Arc<Semaphore>,
    /// Cancelled when the executor leaves the cluster.
    pub(crate) gone: CancellationToken,
    running: AtomicU32,
}

impl Member {
    fn new(info: ExecutorInfo, link: Arc<dyn ExecutorLink>) -> Self {
        Self {
            link,
            slots: Arc::new(Semaphore::new(info.slots.max(1) as usize)),
            gone: CancellationToken::new(),
            running: AtomicU32::new(0),
            info,
        }
    }

    /// Tasks this coordinator runs on it now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }
}

/// A slot taken on a member; frees it and wakes waiting tasks when dropped.
pub(crate) struct Slot {
    pub member: Arc<Member>,
    _permit: OwnedSemaphorePermit,
    members: Arc<Members>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.member.running.fetch_sub(1, Ordering::Relaxed);
        self.members.changed.notify_waiters();
    }
}

/// The executors currently registered.
pub struct Members {
    map: RwLock<HashMap<String, Arc<Member>>>,
    changed: Notify,
    connect: Box<Connect>,
}

impl Members {
    /// Members called over gRPC, with TLS for `https://` addresses.
    pub fn grpc(tls: ClientTls) -> Arc<Self> {
        Self::with_links(move |info| GrpcLink::connect(&tls, info))
    }

    /// Members called through the links `connect` makes.
    pub fn with_links(
        connect: impl Fn(&ExecutorInfo) -> Result<Arc<dyn ExecutorLink>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            map: RwLock::default(),
            changed: Notify::new(),
            connect: Box::new(connect),
        })
    }

    /// Sorted by id.
    pub fn list(&self) -> Vec<Arc<Member>> {
        let mut members: Vec<_> = self
            .map
            .read()
            .expect("members")
            .values()
            .cloned()
            .collect();
        members.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        members
    }

    /// Takes a free slot, waiting for one; the member with most free slots wins, and `avoid`
    /// (the executor of the task's previous attempt) only when no other has a slot.
    pub(crate) async fn take_slot(self: &Arc<Self>, avoid: Option<&str>) -> Slot {
        let mut waiting_logged = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut members = self.list();
            members.sort_by_key(|m| {
                (
                    Some(m.info.id.as_str()) == avoid,
                    usize::MAX - m.slots.available_permits(),
                )
            });
            for member in members {
                if let Ok(permit) = member.slots.clone().try_acquire_owned() {
                    member.running.fetch_add(1, Ordering::Relaxed);
                    return Slot {
                        member,
                        _permit: permit,
                        members: self.clone(),
                    };
                }
            }
            if !waiting_logged && self.map.read().expect("members").is_empty() {
                tracing::warn!("no executor registered; tasks wait for one");
                waiting_logged = true;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// An executor registered, or changed its registration (a restart at a new address).
    pub fn join(&self, info: ExecutorInfo) {
        let mut map = self.map.write().expect("members");
        if let Some(old) = map.get(&info.id) {
            if old.info == info {
                return;
            }
            old.gone.cancel();
        }
        match (self.connect)(&info) {
            Ok(link) => {
                tracing::info!(executor = %info.id, address = %info.address, slots = info.slots, "executor joined");
                map.insert(info.id.clone(), Arc::new(Member::new(info.clone(), link)));
                crate::metrics::executors_alive(map.len());
            }
            Err(e) => {
                tracing::warn!(executor = %info.id, address = %info.address, error = %e, "executor has an unusable address")
            }
        }
        drop(map);
        self.changed.notify_waiters();
    }

    /// An executor left the cluster: calls running on it are abandoned.
    pub fn leave(&self, id: &str) {
        let mut map = self.map.write().expect("members");
        let removed = map.remove(id);
        crate::metrics::executors_alive(map.len());
        drop(map);
        if let Some(member) = removed {
            tracing::warn!(executor = id, running = member.running(), "executor left");
            member.gone.cancel();
        }
        self.changed.notify_waiters();
    }

    /// Follows the executors in etcd until `stop` is cancelled.
    pub async fn follow(self: Arc<Self>, etcd: Client, keys: Keys, stop: CancellationToken) {
        let prefix = keys.executors();
        let id = |kv: &KeyValue| {
            String::from_utf8_lossy(kv.key())
                .trim_start_matches(prefix.as_str())
                .to_string()
        };
        medallion_cluster::etcd::follow(etcd, prefix.clone(), stop, |change| match change {
            Change::All(kvs) => {
                let registered: HashMap<String, ExecutorInfo> = kvs
                    .iter()
                    .filter_map(|kv| ExecutorInfo::decode(kv.value()).ok())
                    .map(|info| (info.id.clone(), info))
                    .collect();
                let known: Vec<String> =
                    self.map.read().expect("members").keys().cloned().collect();
                for id in known.iter().filter(|id| !registered.contains_key(*id)) {
                    self.leave(id);
                }
                for info in registered.into_values() {
                    self.join(info);
                }
            }
            Change::Put(kv) => match ExecutorInfo::decode(kv.value()) {
                Ok(info) => self.join(info),
                Err(e) => {
                    tracing::warn!(key = %id(kv), error = %e, "unreadable executor registration")
                }
            },
            Change::Deleted(kv) => self.leave(&id(kv)),
        })
        .await
    }
}
