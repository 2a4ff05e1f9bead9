//! One executor per stage: before an invocation executes a stage of a run, it takes the stage's
//! lease, so that two invocations of one run (two `mlpipe run --run-id R` at once, or a Step
//! Functions task retried while the first attempt still runs) never execute the same stage at
//! the same time and overwrite each other's files.
//!
//! A stage's lease is a log under the run, `<run>/_leases/<stage>/<seq>.json`, each entry created
//! with a create-only put (`If-None-Match: *` on S3, an atomic hard link on a local disk): the
//! latest entry says who holds the lease (invocation, host, pid) and until when. Taking, renewing
//! and releasing it are each the creation of the next entry, so of two invocations racing for it
//! exactly one succeeds, on every backend, without a lock server. The holder renews the lease
//! (a heartbeat) while the stage runs; a lease that is past its expiry, or whose holder is a
//! process of this machine that no longer exists (a killed run), is taken over.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::storage::Store;
use crate::time::format_millis;

/// How long a lease lasts without a heartbeat (`MLPIPE_LEASE_TTL`, default 60 s). Heartbeats
/// come every third of it.
pub fn ttl() -> Duration {
    std::env::var("MLPIPE_LEASE_TTL")
        .ok()
        .and_then(|v| crate::time::parse_duration(&v))
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(60))
}

/// Who an invocation is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Unique to one invocation of `mlpipe`.
    pub invocation: String,
    pub host: String,
    pub pid: u32,
}

impl Holder {
    /// A new invocation in this process.
    pub fn this_process() -> Holder {
        let h = Holder {
            invocation: format!("{}-{:x}", super::new_run_id(), next_in_process()),
            host: hostname(),
            pid: std::process::id(),
        };
        LIVE.lock().unwrap().insert(h.invocation.clone());
        h
    }

    /// Whether the holder may still be running: not known dead. An invocation of this machine
    /// whose process no longer exists is dead (its pid may have been reused: an invocation of
    /// this process is alive only if this process started it); one of another machine is alive
    /// until its lease expires.
    fn may_be_alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        if self.pid == std::process::id() {
            return LIVE.lock().unwrap().contains(&self.invocation);
        }
        #[cfg(unix)]
        {
            // SAFETY: signal 0 checks that the process exists and sends nothing.
            let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
        #[cfg(not(unix))]
        true
    }
}

/// The invocations this process started.
static LIVE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// A number unique to each invocation within this process.
fn next_in_process() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// This machine's name (`/proc/sys/kernel/hostname`, or `HOSTNAME`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// One entry of a stage's lease log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(flatten)]
    pub holder: Holder,
    /// When this entry was written (taken, renewed or released).
    pub heartbeat: String,
    /// After this time the lease is free unless renewed.
    pub expires: String,
    /// The holder let the lease go (its stage ended).
    #[serde(default)]
    pub released: bool,
}

impl Lease {
    /// Whether another invocation may take the lease now.
    fn is_free(&self, now: DateTime<Utc>) -> bool {
        self.released
            || crate::time::parse_timestamp(&self.expires).is_none_or(|t| now > t)
            || !self.holder.may_be_alive()
    }
}

/// What trying to take a lease gave.
#[derive(Debug)]
pub enum Taken {
    /// This invocation holds it, as entry `seq` of the log.
    Held(u64),
    /// Another live invocation holds it.
    By(Lease),
}

/// The leases of one run's stages, for one invocation.
#[derive(Debug, Clone)]
pub struct Leases {
    store: Store,
    run: String,
    pub me: Holder,
    ttl: Duration,
}

impl Leases {
    pub fn new(store: Store, run: &str) -> Leases {
        Leases {
            store,
            run: run.to_string(),
            me: Holder::this_process(),
            ttl: ttl(),
        }
    }

    /// How often the holder renews a lease.
    pub fn heartbeat_every(&self) -> Duration {
        self.ttl / 3
    }

    fn dir(&self, stage: &str) -> String {
        format!("{}/_leases/{stage}", self.run)
    }

    /// The latest entry of a stage's lease log and its sequence number.
    async fn latest(&self, stage: &str) -> Result<Option<(u64, Lease)>> {
        let listed = self.store.list(&self.dir(stage)).await?;
        let Some(last) = listed.iter().rev().find_map(|o| {
            let name = o.path.rsplit('/').next()?;
            let seq: u64 = name.strip_suffix(".json")?.parse().ok()?;
            Some((seq, o.path.clone()))
        }) else {
            return Ok(None);
        };
        let lease: Lease = match self.store.get_json(&last.1).await? {
            Some(l) => l,
            None => return Ok(None),
        };
        Ok(Some((last.0, lease)))
    }

    /// Writes entry `seq` of the log if nobody wrote it first.
    async fn append(&self, stage: &str, seq: u64, released: bool) -> Result<bool> {
        let now = Utc::now();
        let lease = Lease {
            holder: self.me.clone(),
            heartbeat: format_millis(now),
            expires: format_millis(now + self.ttl),
            released,
        };
        let body = serde_json::to_vec_pretty(&lease)?;
        let rel = format!("{}/{seq:010}.json", self.dir(stage));
        self.store.put_if_absent(&rel, Bytes::from(body)).await
    }

    /// Takes the stage's lease if it is free (or already this invocation's).
    pub async fn take(&self, stage: &str) -> Result<Taken> {
        loop {
            let latest = self.latest(stage).await?;
            let next = match &latest {
                Some((seq, l)) if l.holder == self.me && !l.released => {
                    return Ok(Taken::Held(*seq))
                }
                Some((_, l)) if !l.is_free(Utc::now()) => return Ok(Taken::By(l.clone())),
                Some((seq, _)) => seq + 1,
                None => 0,
            };
            if self.append(stage, next, false).await? {
                return Ok(Taken::Held(next));
            }
            // Another invocation wrote that entry first: look again.
        }
    }

    /// Renews a held lease: `Ok(Some(seq))` of the new entry, `Ok(None)` if another invocation
    /// took it meanwhile (this one's lease had expired).
    pub async fn renew(&self, stage: &str, seq: u64) -> Result<Option<u64>> {
        if self.append(stage, seq + 1, false).await? {
            return Ok(Some(seq + 1));
        }
        match self.latest(stage).await? {
            Some((s, l)) if l.holder == self.me && !l.released => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    /// Lets a held lease go.
    pub async fn release(&self, stage: &str, seq: u64) -> Result<()> {
        let mut seq = seq;
        loop {
            if self.append(stage, seq + 1, true).await? {
                return Ok(());
            }
            match self.latest(stage).await? {
                Some((s, l)) if l.holder == self.me && !l.released => seq = s,
                // Taken over, or already released: nothing of ours to let go.
                _ => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(store: &Store, invocation: &str, pid: u32) -> Leases {
        LIVE.lock().unwrap().insert(invocation.to_string());
        Leases {
            store: store.clone(),
            run: "r".into(),
            me: Holder {
                invocation: invocation.into(),
                host: hostname(),
                pid,
            },
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn one_invocation_holds_a_stage_and_the_other_waits_until_it_is_released() {
        let store = Store::open("memory://lease-unit-1/runs").unwrap();
        let me = std::process::id();
        let (a, b) = (leases(&store, "a", me), leases(&store, "b", me));
        let Taken::Held(seq) = a.take("train").await.unwrap() else {
            panic!("a free lease is taken")
        };
        assert!(matches!(a.take("train").await.unwrap(), Taken::Held(s) if s == seq));
        match b.take("train").await.unwrap() {
            Taken::By(l) => assert_eq!(l.holder.invocation, "a"),
            other => panic!("b took a held lease: {other:?}"),
        }
        let renewed = a.renew("train", seq).await.unwrap().unwrap();
        assert!(matches!(b.take("train").await.unwrap(), Taken::By(_)));
        a.release("train", renewed).await.unwrap();
        assert!(matches!(b.take("train").await.unwrap(), Taken::Held(_)));
        // Other stages are independent.
        assert!(matches!(a.take("score").await.unwrap(), Taken::Held(0)));
    }

    #[tokio::test]
    async fn a_lease_of_a_dead_process_or_past_its_expiry_is_taken_over() {
        let store = Store::open("memory://lease-unit-2/runs").unwrap();
        // A pid no process has (above the kernel's maximum).
        let dead = leases(&store, "dead", 4_194_305);
        assert!(matches!(dead.take("load").await.unwrap(), Taken::Held(0)));
        let me = leases(&store, "me", std::process::id());
        assert!(matches!(me.take("load").await.unwrap(), Taken::Held(1)));
        // Another machine's lease holds until it expires.
        let mut other = leases(&store, "other", 1);
        other.me.host = "elsewhere".into();
        other.ttl = Duration::from_millis(50);
        assert!(matches!(other.take("fit").await.unwrap(), Taken::Held(0)));
        assert!(matches!(me.take("fit").await.unwrap(), Taken::By(_)));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(matches!(me.take("fit").await.unwrap(), Taken::Held(1)));
        // The old holder learns it lost the lease when it renews.
        assert_eq!(other.renew("fit", 0).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_many_invocations_racing_for_a_free_lease_exactly_one_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let l = leases(&store, &format!("inv{i}"), std::process::id());
                tokio::spawn(async move { l.take("validate").await.unwrap() })
            })
            .collect();
        let mut held = 0;
        for t in tasks {
            held += usize::from(matches!(t.await.unwrap(), Taken::Held(_)));
        }
        assert_eq!(held, 1);
    }
}
