//! Durable per-partition checkpoints for tally.
//!
//! A checkpoint is a partition's aggregate state together with the *next* offset
//! it covers (exclusive: the state includes every record with offset `< next_offset`).
//! Both are written in one synced RocksDB `WriteBatch`, so a checkpoint is never
//! half-written: after a crash either the old or the new (state, offset) pair is read.
//!
//! Every checkpoint also carries the caller's configuration fingerprint (opaque to
//! this crate): the caller refuses a checkpoint written under another configuration
//! instead of mixing two meanings in one aggregate.
//!
//! Checkpoints are namespaced by consumer group and input topic, so two pipelines
//! sharing a state directory never read each other's state. Values carry an envelope
//! with two versions: this crate's envelope format and the caller's body schema
//! ([`Versioned::VERSION`]). Anything unreadable is an error naming the partition and
//! the directory; nothing is ever silently reset.
//!
//! This is the only crate of the workspace that imports `rocksdb`. Every call is
//! blocking I/O: async callers run it on a blocking thread.

use std::fmt;
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the envelope written around every checkpoint body.
/// 2: the header carries the configuration fingerprint.
pub const ENVELOPE_VERSION: u32 = 2;

const KEY_PREFIX: &[u8] = b"ckpt\0";

/// A body type stored in checkpoints declares its schema version; a checkpoint
/// written with another version is refused rather than misread.
pub trait Versioned {
    const VERSION: u32;
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {dir} is in use by another process (RocksDB lock held); \
         stop the other tally instance or give this one its own --state-dir"
    )]
    Locked { dir: PathBuf },
    #[error("cannot open state directory {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("state directory {dir}: RocksDB {op} failed: {source}")]
    Io {
        dir: PathBuf,
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error(
        "checkpoint of {namespace} partition {partition} in {dir} was written with \
         format {found_envelope}/{found_body}, this build reads {expected_envelope}/{expected_body}; \
         run `tally run --reset-state` to discard local state and rebuild it from Kafka"
    )]
    UnknownVersion {
        dir: PathBuf,
        namespace: String,
        partition: i32,
        found_envelope: u32,
        found_body: u32,
        expected_envelope: u32,
        expected_body: u32,
    },
    #[error(
        "checkpoint of {namespace} partition {partition} in {dir} is unreadable ({reason}); \
         run `tally run --reset-state` to discard local state and rebuild it from Kafka"
    )]
    Corrupt {
        dir: PathBuf,
        namespace: String,
        partition: i32,
        reason: String,
    },
    #[error("cannot encode checkpoint of partition {partition}: {source}")]
    Encode {
        partition: i32,
        #[source]
        source: bincode::error::EncodeError,
    },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Which pipeline a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub group: String,
    pub topic: String,
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {:?} topic {:?}", self.group, self.topic)
    }
}

impl Namespace {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            topic: topic.into(),
        }
    }

    fn prefix(&self) -> Vec<u8> {
        let mut key = KEY_PREFIX.to_vec();
        for part in [&self.group, &self.topic] {
            key.extend_from_slice(&(part.len() as u32).to_be_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        key
    }

    fn key(&self, partition: i32) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&partition.to_be_bytes());
        key
    }

    fn decode_key(key: &[u8]) -> Option<(Namespace, i32)> {
        let mut rest = key.strip_prefix(KEY_PREFIX)?;
        let mut parts = Vec::with_capacity(2);
        for _ in 0..2 {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            if tail.len() < len {
                return None;
            }
            parts.push(String::from_utf8(tail[..len].to_vec()).ok()?);
            rest = &tail[len..];
        }
        let partition = i32::from_be_bytes(rest.try_into().ok()?);
        let topic = parts.pop()?;
        let group = parts.pop()?;
        Some((Namespace { group, topic }, partition))
    }
}

/// A partition's state and the offset it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint<T> {
    pub partition: i32,
    /// Exclusive: `state` aggregates exactly the records with offset `< next_offset`.
    pub next_offset: i64,
    pub state: T,
    /// The configuration `state` was computed under (the caller's encoding).
    pub fingerprint: String,
}

/// One stored checkpoint as listed by [`StateStore::list_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    pub namespace: Namespace,
    pub checkpoint: Checkpoint<T>,
    pub size_bytes: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    envelope: u32,
    body: u32,
    next_offset: i64,
    fingerprint: String,
}

/// The leading fields every envelope version starts with: read first, so a
/// checkpoint of another version is reported as such, not as corrupt.
#[derive(serde::Deserialize)]
struct Versions {
    envelope: u32,
    body: u32,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// The checkpoint store of one state directory.
pub struct StateStore {
    db: DB,
    dir: PathBuf,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`. Fails with
    /// [`StateError::Locked`] when another process has it open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Checkpoints are tiny; keep RocksDB's footprint small.
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        match DB::open(&opts, &dir) {
            Ok(db) => Ok(Self { db, dir }),
            Err(e) if is_lock_error(&e) => Err(StateError::Locked { dir }),
            Err(source) => Err(StateError::Open { dir, source }),
        }
    }

    /// Opens an existing store for reading only; works while a running tally
    /// holds the lock.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        match DB::open_for_read_only(&Options::default(), &dir, false) {
            Ok(db) => Ok(Self { db, dir }),
            Err(source) => Err(StateError::Open { dir, source }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes every checkpoint under `dir` (the explicit way out of an
    /// unreadable or incompatible state directory).
    pub fn destroy(dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if !dir.exists() {
            return Ok(());
        }
        DB::destroy(&Options::default(), dir).map_err(|source| {
            if is_lock_error(&source) {
                StateError::Locked {
                    dir: dir.to_path_buf(),
                }
            } else {
                StateError::Io {
                    dir: dir.to_path_buf(),
                    op: "destroy",
                    source,
                }
            }
        })
    }

    /// Reads a partition's checkpoint, if there is one.
    pub fn load<T: DeserializeOwned + Versioned>(
        &self,
        ns: &Namespace,
        partition: i32,
    ) -> Result<Option<Checkpoint<T>>> {
        let raw = self
            .db
            .get(ns.key(partition))
            .map_err(|source| StateError::Io {
                dir: self.dir.clone(),
                op: "get",
                source,
            })?;
        raw.map(|bytes| decode(&self.dir, ns, partition, &bytes))
            .transpose()
    }

    /// Writes the checkpoints of several partitions in one synced batch.
    pub fn checkpoint<T: Serialize + Versioned>(
        &self,
        ns: &Namespace,
        checkpoints: &[Checkpoint<T>],
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for cp in checkpoints {
            batch.put(ns.key(cp.partition), encode(cp)?);
        }
        self.write(batch)
    }

    /// Forgets a partition's checkpoint (synced).
    pub fn remove(&self, ns: &Namespace, partition: i32) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete(ns.key(partition));
        self.write(batch)
    }

    /// All checkpoints of one namespace, by partition.
    pub fn list<T: DeserializeOwned + Versioned>(
        &self,
        ns: &Namespace,
    ) -> Result<Vec<Checkpoint<T>>> {
        Ok(self
            .list_all::<T>()?
            .into_iter()
            .filter(|l| &l.namespace == ns)
            .map(|l| l.checkpoint)
            .collect())
    }

    /// Every checkpoint in the directory, of every namespace.
    pub fn list_all<T: DeserializeOwned + Versioned>(&self) -> Result<Vec<Listed<T>>> {
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(KEY_PREFIX, rocksdb::Direction::Forward));
        for item in iter {
            let (key, value) = item.map_err(|source| StateError::Io {
                dir: self.dir.clone(),
                op: "iterate",
                source,
            })?;
            if !key.starts_with(KEY_PREFIX) {
                break;
            }
            let Some((namespace, partition)) = Namespace::decode_key(&key) else {
                return Err(StateError::Corrupt {
                    dir: self.dir.clone(),
                    namespace: "?".into(),
                    partition: -1,
                    reason: format!("malformed key {key:?}"),
                });
            };
            let checkpoint = decode(&self.dir, &namespace, partition, &value)?;
            out.push(Listed {
                namespace,
                checkpoint,
                size_bytes: key.len() + value.len(),
            });
        }
        Ok(out)
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        // The checkpoint must survive power loss, not only a process crash:
        // a later `K == C` decision trusts it.
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|source| StateError::Io {
                dir: self.dir.clone(),
                op: "write",
                source,
            })
    }
}

fn decode<T: DeserializeOwned + Versioned>(
    dir: &Path,
    ns: &Namespace,
    partition: i32,
    bytes: &[u8],
) -> Result<Checkpoint<T>> {
    let corrupt = |reason: String| StateError::Corrupt {
        dir: dir.to_path_buf(),
        namespace: ns.to_string(),
        partition,
        reason,
    };
    let (versions, _): (Versions, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| corrupt(e.to_string()))?;
    if versions.envelope != ENVELOPE_VERSION || versions.body != T::VERSION {
        return Err(StateError::UnknownVersion {
            dir: dir.to_path_buf(),
            namespace: ns.to_string(),
            partition,
            found_envelope: versions.envelope,
            found_body: versions.body,
            expected_envelope: ENVELOPE_VERSION,
            expected_body: T::VERSION,
        });
    }
    let (header, used): (Header, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| corrupt(e.to_string()))?;
    let (state, body_len): (T, usize) = bincode::serde::decode_from_slice(&bytes[used..], config())
        .map_err(|e| corrupt(e.to_string()))?;
    if used + body_len != bytes.len() {
        return Err(corrupt(format!(
            "{} trailing bytes",
            bytes.len() - used - body_len
        )));
    }
    Ok(Checkpoint {
        partition,
        next_offset: header.next_offset,
        state,
        fingerprint: header.fingerprint,
    })
}

fn encode<T: Serialize + Versioned>(cp: &Checkpoint<T>) -> Result<Vec<u8>> {
    let header = Header {
        envelope: ENVELOPE_VERSION,
        body: T::VERSION,
        next_offset: cp.next_offset,
        fingerprint: cp.fingerprint.clone(),
    };
    let wrap = |source| StateError::Encode {
        partition: cp.partition,
        source,
    };
    let mut bytes = bincode::serde::encode_to_vec(&header, config()).map_err(wrap)?;
    bytes.extend(bincode::serde::encode_to_vec(&cp.state, config()).map_err(wrap)?);
    Ok(bytes)
}

fn is_lock_error(e: &rocksdb::Error) -> bool {
    let msg = e.to_string();
    msg.contains("lock")
        && (msg.contains("LOCK") || msg.contains("Resource temporarily unavailable"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Body {
        counts: BTreeMap<String, u64>,
        total: u64,
    }
    impl Versioned for Body {
        const VERSION: u32 = 7;
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct BodyV8 {
        total: u64,
    }
    impl Versioned for BodyV8 {
        const VERSION: u32 = 8;
    }

    fn body(total: u64) -> Body {
        Body {
            counts: BTreeMap::from([("android".to_string(), total)]),
            total,
        }
    }

    fn ns() -> Namespace {
        Namespace::new("g", "user-login")
    }

    #[test]
    fn checkpoint_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.load::<Body>(&ns(), 0).unwrap(), None);
        let cps = vec![
            Checkpoint {
                partition: 0,
                next_offset: 10,
                state: body(10),
                fingerprint: "f1".into(),
            },
            Checkpoint {
                partition: 3,
                next_offset: 7,
                state: body(5),
                fingerprint: "f1".into(),
            },
        ];
        store.checkpoint(&ns(), &cps).unwrap();
        assert_eq!(store.load::<Body>(&ns(), 0).unwrap(), Some(cps[0].clone()));
        assert_eq!(store.list::<Body>(&ns()).unwrap(), cps);
        drop(store);
        // Survives a reopen.
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.load::<Body>(&ns(), 3).unwrap(), Some(cps[1].clone()));
        store.remove(&ns(), 3).unwrap();
        assert_eq!(store.load::<Body>(&ns(), 3).unwrap(), None);
    }

    #[test]
    fn namespaces_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let other = Namespace::new("g2", "user-login");
        store
            .checkpoint(
                &ns(),
                &[Checkpoint {
                    partition: 0,
                    next_offset: 1,
                    state: body(1),
                    fingerprint: "f1".into(),
                }],
            )
            .unwrap();
        assert_eq!(store.load::<Body>(&other, 0).unwrap(), None);
        let all = store.list_all::<Body>().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].namespace, ns());
        assert!(all[0].size_bytes > 0);
    }

    #[test]
    fn second_open_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
    }

    #[test]
    fn unknown_version_is_an_error_naming_partition_and_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store
            .checkpoint(
                &ns(),
                &[Checkpoint {
                    partition: 2,
                    next_offset: 1,
                    state: BodyV8 { total: 1 },
                    fingerprint: "f1".into(),
                }],
            )
            .unwrap();
        let err = store.load::<Body>(&ns(), 2).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            StateError::UnknownVersion {
                found_body: 8,
                expected_body: 7,
                ..
            }
        ));
        assert!(
            msg.contains("partition 2") && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("--reset-state"), "{msg}");
    }

    #[test]
    fn corrupt_value_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store
            .db
            .put(ns().key(4), b"\x02\x07garbage-garbage")
            .unwrap();
        let err = store.load::<Body>(&ns(), 4).unwrap_err();
        assert!(
            matches!(err, StateError::Corrupt { partition: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn destroy_clears_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store
                .checkpoint(
                    &ns(),
                    &[Checkpoint {
                        partition: 0,
                        next_offset: 1,
                        state: body(1),
                        fingerprint: "f1".into(),
                    }],
                )
                .unwrap();
        }
        StateStore::destroy(dir.path()).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.list_all::<Body>().unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn keys_round_trip(group in ".{0,20}", topic in ".{0,20}", partition in any::<i32>()) {
            let ns = Namespace::new(group, topic);
            prop_assert_eq!(Namespace::decode_key(&ns.key(partition)), Some((ns, partition)));
        }

        #[test]
        fn encoding_round_trips(total in any::<u64>(), next in any::<i64>(),
                                counts in proptest::collection::btree_map(".{0,8}", any::<u64>(), 0..8),
                                fp in ".{0,40}") {
            let cp = Checkpoint { partition: 1, next_offset: next, state: Body { counts, total }, fingerprint: fp };
            let bytes = encode(&cp).unwrap();
            prop_assert_eq!(decode::<Body>(Path::new("/x"), &ns(), 1, &bytes).unwrap(), cp);
        }
    }
}
