//! The live executors, as etcd knows them.
//!
//! Each executor keeps `<prefix>/executors/<id>` alive under its lease. The coordinator
//! follows that prefix ([`medallion_cluster::etcd::follow`]). An executor whose key goes (lease expired or revoked)
//! is gone at once: its running calls are abandoned and their tasks rescheduled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use etcd_client::{Client, KeyValue};
use medallion_cluster::Keys;
use medallion_cluster::etcd::Change;
use medallion_proto::ExecutorInfo;
use medallion_proto::executor_client::ExecutorClient;
use prost::Message;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Task results list every file written; far below this in practice.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// One registered executor and the coordinator's view of its slots.
#[derive(Debug)]
pub struct Member {
    pub info: ExecutorInfo,
    pub(crate) client: ExecutorClient<Channel>,
    slots: Arc<Semaphore>,
    /// Cancelled when the executor leaves the cluster.
    pub(crate) gone: CancellationToken,
    running: AtomicU32,
}

impl Member {
    fn new(info: ExecutorInfo) -> Result<Self> {
        let channel = Endpoint::from_shared(info.address.clone())?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            client: ExecutorClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            slots: Arc::new(Semaphore::new(info.slots.max(1) as usize)),
            gone: CancellationToken::new(),
            running: AtomicU32::new(0),
            info,
        })
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
#[derive(Debug, Default)]
pub struct Members {
    map: RwLock<HashMap<String, Arc<Member>>>,
    changed: Notify,
}

impl Members {
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

    fn upsert(&self, info: ExecutorInfo) {
        let mut map = self.map.write().expect("members");
        if let Some(old) = map.get(&info.id) {
            if old.info == info {
                return;
            }
            old.gone.cancel();
        }
        match Member::new(info.clone()) {
            Ok(member) => {
                tracing::info!(executor = %info.id, address = %info.address, slots = info.slots, "executor joined");
                map.insert(info.id.clone(), Arc::new(member));
                crate::metrics::executors_alive(map.len());
            }
            Err(e) => {
                tracing::warn!(executor = %info.id, address = %info.address, error = %e, "executor has an unusable address")
            }
        }
        drop(map);
        self.changed.notify_waiters();
    }

    fn remove(&self, id: &str) {
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
                    self.remove(id);
                }
                for info in registered.into_values() {
                    self.upsert(info);
                }
            }
            Change::Put(kv) => match ExecutorInfo::decode(kv.value()) {
                Ok(info) => self.upsert(info),
                Err(e) => {
                    tracing::warn!(key = %id(kv), error = %e, "unreadable executor registration")
                }
            },
            Change::Deleted(kv) => self.remove(&id(kv)),
        })
        .await
    }
}
