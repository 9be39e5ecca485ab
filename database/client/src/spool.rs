//! The event spool: a daemon records events locally, a background task drains them
//! to sf-database (DESIGN invariant 9, "nothing lost").
//!
//! Contract:
//! - [`EventSpool::record`] never touches the network: it appends one record to the
//!   current segment file of the spool directory with a single `write(2)` before it
//!   returns, so the event survives the process being killed (`kill -9`) right after.
//!   fsync follows [`FsyncPolicy`]: `EveryRecord` syncs before `record` returns;
//!   `Interval(d)` (the default, 200 ms) syncs at most every `d` — from `record` and from
//!   the drain task — so a *machine* crash may lose the records of the last interval.
//! - Each event gets a uuid at record time (unless the caller set one). sf-database
//!   stores events with `INSERT IGNORE` on the `events.event_uuid` primary key, so a
//!   batch that is sent again after a crash (acknowledged, but the cursor not yet
//!   written) is not duplicated: every event arrives exactly once.
//! - Layout: `<dir>/segment-<seq:020>.log` files, each an 8-byte magic
//!   ([`SEGMENT_MAGIC`]) then records `[len: u32 LE][crc32c(payload): u32 LE][payload]`,
//!   the payload being the protobuf `sf.v1.Event`. A segment is rotated past
//!   [`SpoolConfig::segment_bytes`]; every open starts a new segment. `<dir>/cursor`
//!   (seq, offset, crc32c; replaced atomically by rename) is the position up to which
//!   events were acknowledged. A missing or damaged cursor means "from the oldest
//!   segment": events are re-sent, never lost.
//! - Opening the spool scans every segment; a record that is incomplete (a torn tail),
//!   longer than [`MAX_RECORD_BYTES`] or fails its checksum ends that segment: it and
//!   everything after it in that segment are truncated away, logged, and counted in
//!   `eventlog_spool_damaged_total`.
//! - The drain task ([`EventSpool::spawn_drain`]) sends batches (≤ [`DrainConfig::batch_size`]
//!   events, ≤ [`DrainConfig::batch_bytes`]) through `RecordEventBatch`; the cursor moves
//!   and fully drained segments are deleted only after the batch is acknowledged. While
//!   sf-database is unreachable it backs off exponentially with jitter (between
//!   [`DrainConfig::initial_backoff`] and [`DrainConfig::max_backoff`]). A batch the
//!   gateway rejects as invalid is re-sent one event at a time; only the events it
//!   rejects individually are discarded (logged, `eventlog_spool_rejected_total`).
//! - High water mark: when [`EventSpool::depth`] (events spooled and not yet
//!   acknowledged) has reached [`SpoolConfig::high_water_mark`] (`SHAKENFIST_SPOOL_HIGH_WATER_MARK`,
//!   default 100 000), `record` drops the NEW event (older events are kept), returns
//!   [`Recorded::Dropped`] and increments `eventlog_spool_dropped_total`.
//! - Graceful shutdown: once the [`Shutdown`] handle triggers, the drain task keeps
//!   sending for at most [`DrainConfig::shutdown_flush`], then syncs and returns a
//!   [`DrainReport`]; what is left stays on disk for the next start.
//!
//! ```ignore
//! let metrics = SpoolMetrics::default();
//! metrics.register(daemon_metrics.registry_mut());
//! let spool = EventSpool::open(args.spool.config(storage_path.join("spool")), metrics)?;
//! let drain = spool.spawn_drain(gateway_client.clone(), DrainConfig::default(), shutdown.clone())?;
//! spool.record(spool::new_event("audit", "instance created", &[("instance", &uuid)]))?;
//! // at exit: shutdown.trigger(); let report = drain.await?;
//! ```

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use sf_daemon::{ConfigError, Shutdown};
use sf_proto::v1::{Event, EventObject, RecordEventBatchReply, RecordEventBatchRequest};
use tokio::sync::Notify;
use tonic::Code;

use crate::{ClientError, GatewayClient};

/// The default [`SpoolConfig::high_water_mark`].
pub const DEFAULT_HIGH_WATER_MARK: u64 = 100_000;
/// The environment variable of the high water mark.
pub const HIGH_WATER_MARK_KEY: &str = "SHAKENFIST_SPOOL_HIGH_WATER_MARK";
/// The environment variable of the fsync interval (milliseconds; 0 = every record).
pub const FSYNC_INTERVAL_KEY: &str = "SHAKENFIST_SPOOL_FSYNC_INTERVAL_MS";
/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SFSPOOL1";
/// Bytes before a record's payload: length and checksum.
pub const RECORD_HEADER_LEN: usize = 8;
/// The largest payload a record may hold.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

const HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const CURSOR_LEN: usize = 20;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory could not be created, listed or repaired.
    #[error("cannot open the event spool {path}: {source}")]
    OpenSpool {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record could not be appended (disk full, ...); the event was not spooled.
    #[error("cannot append to the event spool {path}: {source}")]
    AppendRecord {
        /// The segment.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A segment could not be synced.
    #[error("cannot fsync the event spool {path}: {source}")]
    SyncSegment {
        /// The segment.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A segment could not be read.
    #[error("cannot read the event spool {path}: {source}")]
    ReadSegment {
        /// The segment.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record read back is damaged (only possible if the disk changed under us).
    #[error("damaged record in {path} at offset {offset}: {reason}")]
    DamagedRecord {
        /// The segment.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong.
        reason: RecordError,
    },
    /// The cursor could not be written, or an acknowledged segment not deleted.
    #[error("cannot advance the event spool cursor in {path}: {source}")]
    AdvanceCursor {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The encoded event is larger than [`MAX_RECORD_BYTES`].
    #[error(
        "event {event_uuid} is {bytes} bytes encoded, more than the spool's {MAX_RECORD_BYTES}"
    )]
    EventTooLarge {
        /// The event.
        event_uuid: String,
        /// Its encoded size.
        bytes: usize,
    },
    /// [`EventSpool::spawn_drain`] was called while a drain task is running.
    #[error("the event spool {0} already has a drain task")]
    AlreadyDraining(PathBuf),
    /// A blocking spool task panicked or was cancelled.
    #[error("event spool task failed: {0}")]
    Task(String),
}

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record ends before its header or payload does (a torn write).
    #[error("truncated record: {have} of {need} bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the record needs.
        need: usize,
    },
    /// The length field is larger than [`MAX_RECORD_BYTES`].
    #[error("record length {0} exceeds the maximum")]
    TooLong(usize),
    /// The payload does not match its checksum.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The stored crc32c.
        stored: u32,
        /// The crc32c of the payload.
        computed: u32,
    },
    /// The payload is not a protobuf `Event`.
    #[error("payload is not an event: {0}")]
    Decode(String),
}

/// Appends the record for `payload` (header and payload) to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    // Callers check MAX_RECORD_BYTES (< u32::MAX) first.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&CRC.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the record at the start of `buf`: `Ok(None)` when `buf` is empty, else the
/// payload and the record's total length.
pub fn decode_record(buf: &[u8]) -> Result<Option<(&[u8], usize)>, RecordError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Truncated {
            have: buf.len(),
            need: RECORD_HEADER_LEN,
        });
    }
    let (len, stored) = parse_header(&buf[..RECORD_HEADER_LEN])?;
    let need = RECORD_HEADER_LEN + len;
    if buf.len() < need {
        return Err(RecordError::Truncated {
            have: buf.len(),
            need,
        });
    }
    let payload = &buf[RECORD_HEADER_LEN..need];
    check_crc(payload, stored)?;
    Ok(Some((payload, need)))
}

fn parse_header(header: &[u8]) -> Result<(usize, u32), RecordError> {
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0) as usize;
    if len > MAX_RECORD_BYTES {
        return Err(RecordError::TooLong(len));
    }
    Ok((len, word(4)))
}

fn check_crc(payload: &[u8], stored: u32) -> Result<(), RecordError> {
    let computed = CRC.checksum(payload);
    if computed != stored {
        return Err(RecordError::Checksum { stored, computed });
    }
    Ok(())
}

/// When spooled records are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every `record` returns (durable against a machine crash; slow).
    EveryRecord,
    /// At most this often; a machine crash may lose the last interval's records (a
    /// process crash loses nothing).
    Interval(Duration),
}

/// How a spool is kept.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool directory (created if missing); one per daemon.
    pub dir: PathBuf,
    /// Events spooled and unacknowledged beyond which new events are dropped.
    pub high_water_mark: u64,
    /// When records are fsynced.
    pub fsync: FsyncPolicy,
    /// Segment size after which a new segment is started.
    pub segment_bytes: u64,
    /// Filled into events recorded with an empty `fqdn`.
    pub fqdn: String,
}

impl SpoolConfig {
    /// Defaults for `dir`: high water mark 100 000, fsync every 200 ms, 8 MiB segments,
    /// fqdn = this host's name.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            high_water_mark: DEFAULT_HIGH_WATER_MARK,
            fsync: FsyncPolicy::Interval(Duration::from_millis(200)),
            segment_bytes: 8 * 1024 * 1024,
            fqdn: hostname(),
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), or `localhost`.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The spool's configuration keys, to `#[command(flatten)]` into a daemon's config.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolArgs {
    /// Events spooled but not yet in sf-database beyond which new events are dropped
    /// (and counted in eventlog_spool_dropped_total).
    #[arg(long, env = HIGH_WATER_MARK_KEY, default_value_t = DEFAULT_HIGH_WATER_MARK)]
    pub spool_high_water_mark: u64,
    /// How often spooled events are fsynced, in milliseconds; 0 = before every record
    /// returns.
    #[arg(long, env = FSYNC_INTERVAL_KEY, default_value_t = 200)]
    pub spool_fsync_interval_ms: u64,
}

impl SpoolArgs {
    /// Checks the values (part of the daemon's `Validate`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.spool_high_water_mark == 0 {
            return Err(ConfigError::invalid(
                HIGH_WATER_MARK_KEY,
                "must be at least 1, got 0",
            ));
        }
        if self.spool_fsync_interval_ms > 60_000 {
            return Err(ConfigError::invalid(
                FSYNC_INTERVAL_KEY,
                format!("must be 0-60000, got {}", self.spool_fsync_interval_ms),
            ));
        }
        Ok(())
    }

    /// The spool configuration for the directory `dir`.
    pub fn config(&self, dir: impl Into<PathBuf>) -> SpoolConfig {
        let mut config = SpoolConfig::new(dir);
        config.high_water_mark = self.spool_high_water_mark;
        config.fsync = match self.spool_fsync_interval_ms {
            0 => FsyncPolicy::EveryRecord,
            ms => FsyncPolicy::Interval(Duration::from_millis(ms)),
        };
        config
    }
}

/// The spool's metrics; register them once in the daemon's registry.
#[derive(Debug, Clone, Default)]
pub struct SpoolMetrics {
    /// `eventlog_spool_depth`: events spooled and not yet acknowledged.
    pub depth: Gauge,
    /// `eventlog_spool_dropped_total`: events dropped at the high water mark.
    pub dropped: Counter,
    /// `eventlog_spool_sent_total`: events acknowledged by sf-database.
    pub sent: Counter,
    /// `eventlog_spool_rejected_total`: events sf-database refused as invalid.
    pub rejected: Counter,
    /// `eventlog_spool_damaged_total`: damaged segment tails discarded.
    pub damaged: Counter,
}

impl SpoolMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "eventlog_spool_depth",
            "Events spooled locally and not yet acknowledged by sf-database",
            self.depth.clone(),
        );
        registry.register(
            "eventlog_spool_dropped",
            "Events dropped because the spool was at SPOOL_HIGH_WATER_MARK",
            self.dropped.clone(),
        );
        registry.register(
            "eventlog_spool_sent",
            "Spooled events acknowledged by sf-database",
            self.sent.clone(),
        );
        registry.register(
            "eventlog_spool_rejected",
            "Spooled events sf-database rejected as invalid (discarded)",
            self.rejected.clone(),
        );
        registry.register(
            "eventlog_spool_damaged",
            "Damaged spool segment tails (torn writes, checksum mismatches) discarded",
            self.damaged.clone(),
        );
    }
}

/// What [`EventSpool::record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Spooled, with this event uuid.
    Spooled(String),
    /// Dropped: the spool is at its high water mark.
    Dropped,
}

/// An event of `event_type` about `objects` ((object type, object uuid)); its uuid,
/// timestamp and fqdn are filled in by [`EventSpool::record`].
pub fn new_event(event_type: &str, message: impl Into<String>, objects: &[(&str, &str)]) -> Event {
    Event {
        event_type: event_type.to_string(),
        message: message.into(),
        objects: objects
            .iter()
            .map(|(t, u)| EventObject {
                object_type: (*t).to_string(),
                object_uuid: (*u).to_string(),
            })
            .collect(),
        ..Event::default()
    }
}

/// A position in the spool: segment and byte offset (ordered by both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    seq: u64,
    offset: u64,
}

fn segment_name(seq: u64) -> String {
    format!("segment-{seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The appending side.
struct Writer {
    dir: PathBuf,
    /// The open segment, if any record was written since open.
    file: Option<File>,
    /// The open segment's seq, or the newest existing one when none is open.
    seq: u64,
    /// Bytes in the open segment.
    len: u64,
    dirty: bool,
    last_sync: Instant,
    /// The segment files that exist.
    segments: BTreeSet<u64>,
    /// Set after a failed append: start a new segment before the next one.
    rotate_next: bool,
}

impl Writer {
    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }

    /// The end of segment `seq` if it is the one being written.
    fn open_end(&self, seq: u64) -> Option<u64> {
        (self.file.is_some() && seq == self.seq).then_some(self.len)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let seq = self.seq + 1;
        let path = self.path(seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(SEGMENT_MAGIC)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.insert(seq);
        self.file = Some(file);
        self.seq = seq;
        self.len = HEADER_LEN;
        self.dirty = false;
        self.rotate_next = false;
        Ok(())
    }

    fn append(&mut self, record: &[u8], segment_bytes: u64) -> io::Result<()> {
        let full = self.len > HEADER_LEN && self.len + record.len() as u64 > segment_bytes;
        if self.file.is_none() || self.rotate_next || full {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        if let Err(e) = file.write_all(record) {
            // Cut a partial record off; if even that fails, the next append starts a
            // new segment (and open-time scanning discards the partial tail).
            if file.set_len(self.len).is_err() {
                self.rotate_next = true;
            }
            return Err(e);
        }
        self.len += record.len() as u64;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.dirty
            && let Some(file) = &self.file
        {
            file.sync_data()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// The result of scanning one segment.
struct SegmentScan {
    /// Offsets of the valid records, in order.
    offsets: Vec<u64>,
    /// End of the last valid record.
    valid_end: u64,
    /// The file's length.
    file_len: u64,
    /// Why scanning stopped before the end.
    damage: Option<RecordError>,
}

fn scan_segment(path: &Path) -> io::Result<SegmentScan> {
    let data = fs::read(path)?;
    let file_len = data.len() as u64;
    if data.len() < SEGMENT_MAGIC.len() || &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Ok(SegmentScan {
            offsets: Vec::new(),
            valid_end: 0,
            file_len,
            damage: Some(RecordError::Decode("missing segment magic".into())),
        });
    }
    let mut pos = SEGMENT_MAGIC.len();
    let mut offsets = Vec::new();
    let mut damage = None;
    loop {
        match decode_record(&data[pos..]) {
            Ok(None) => break,
            Ok(Some((payload, n))) => {
                if let Err(e) = Event::decode(payload) {
                    damage = Some(RecordError::Decode(e.to_string()));
                    break;
                }
                offsets.push(pos as u64);
                pos += n;
            }
            Err(e) => {
                damage = Some(e);
                break;
            }
        }
    }
    Ok(SegmentScan {
        offsets,
        valid_end: pos as u64,
        file_len,
        damage,
    })
}

struct Inner {
    config: SpoolConfig,
    writer: Mutex<Writer>,
    cursor: Mutex<Cursor>,
    depth: AtomicU64,
    metrics: SpoolMetrics,
    notify: Notify,
    /// A drain task is running (there must be one at most).
    draining: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent at every await-free step; recover from a
    // panic elsewhere rather than poisoning the spool for good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A batch read from the spool.
struct Batch {
    events: Vec<Event>,
    end: Cursor,
}

/// The local durable event spool; cheap to clone.
#[derive(Clone)]
pub struct EventSpool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSpool")
            .field("dir", &self.inner.config.dir)
            .field("depth", &self.depth())
            .finish()
    }
}

impl EventSpool {
    /// Opens (creating if needed) the spool in `config.dir`: scans every segment,
    /// truncates damaged tails, and counts the events not yet acknowledged.
    pub fn open(config: SpoolConfig, metrics: SpoolMetrics) -> Result<Self, SpoolError> {
        let dir = config.dir.clone();
        let open_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError::OpenSpool { path, source }
        };
        fs::create_dir_all(&dir).map_err(open_err(&dir))?;
        let mut segments = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(open_err(&dir))? {
            let entry = entry.map_err(open_err(&dir))?;
            if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
                segments.insert(seq);
            }
        }
        let _ = fs::remove_file(dir.join(CURSOR_TMP));
        let stored = read_cursor(&dir.join(CURSOR_FILE));
        let mut cursor = match stored {
            Some(c) => c,
            None => Cursor {
                seq: segments.first().copied().unwrap_or(0),
                offset: HEADER_LEN,
            },
        };
        // Segments before the cursor were acknowledged; a crash kept them.
        let acknowledged: Vec<u64> = segments.range(..cursor.seq).copied().collect();
        for seq in acknowledged {
            let path = dir.join(segment_name(seq));
            fs::remove_file(&path).map_err(open_err(&path))?;
            segments.remove(&seq);
        }
        if !segments.contains(&cursor.seq) {
            cursor = Cursor {
                seq: segments.first().copied().unwrap_or(cursor.seq),
                offset: HEADER_LEN,
            };
        }
        let mut depth = 0u64;
        let mut damaged = 0u64;
        for seq in segments.clone() {
            let path = dir.join(segment_name(seq));
            let scan = scan_segment(&path).map_err(open_err(&path))?;
            if let Some(reason) = &scan.damage {
                damaged += 1;
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = scan.valid_end,
                    discarded_bytes = scan.file_len - scan.valid_end,
                    %reason,
                    "event spool: discarding a damaged segment tail"
                );
                if scan.valid_end < HEADER_LEN {
                    fs::remove_file(&path).map_err(open_err(&path))?;
                    segments.remove(&seq);
                    if cursor.seq == seq {
                        cursor = Cursor {
                            seq: segments.range(seq + 1..).next().copied().unwrap_or(seq),
                            offset: HEADER_LEN,
                        };
                    }
                    continue;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(open_err(&path))?;
                file.set_len(scan.valid_end).map_err(open_err(&path))?;
                file.sync_all().map_err(open_err(&path))?;
            }
            if seq == cursor.seq {
                // The cursor must sit on a record boundary; if it does not (a cursor
                // synced ahead of its segment by a machine crash), re-send the segment.
                let on_boundary = cursor.offset == scan.valid_end
                    || scan.offsets.binary_search(&cursor.offset).is_ok();
                if !on_boundary {
                    cursor.offset = HEADER_LEN;
                }
                depth += scan.offsets.iter().filter(|&&o| o >= cursor.offset).count() as u64;
            } else if seq > cursor.seq {
                depth += scan.offsets.len() as u64;
            }
        }
        sync_dir(&dir).map_err(open_err(&dir))?;
        metrics.damaged.inc_by(damaged);
        metrics.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        let newest = segments.last().copied().unwrap_or(0).max(cursor.seq);
        let writer = Writer {
            dir: dir.clone(),
            file: None,
            seq: newest,
            len: 0,
            dirty: false,
            last_sync: Instant::now(),
            segments,
            rotate_next: false,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                writer: Mutex::new(writer),
                cursor: Mutex::new(cursor),
                depth: AtomicU64::new(depth),
                metrics,
                notify: Notify::new(),
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Events spooled and not yet acknowledged by sf-database.
    pub fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Acquire)
    }

    /// Spools `event` (local disk only, never the network). An empty `event_uuid` gets
    /// a new v4 uuid, a zero `timestamp` the current time, an empty `fqdn` the spool's.
    /// At the high water mark the event is dropped and counted ([`Recorded::Dropped`]).
    pub fn record(&self, mut event: Event) -> Result<Recorded, SpoolError> {
        if event.event_uuid.is_empty() {
            event.event_uuid = uuid::Uuid::new_v4().to_string();
        }
        if event.timestamp == 0.0 {
            event.timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
        }
        if event.fqdn.is_empty() {
            event.fqdn.clone_from(&self.inner.config.fqdn);
        }
        let inner = &self.inner;
        if inner.depth.load(Ordering::Acquire) >= inner.config.high_water_mark {
            inner.metrics.dropped.inc();
            return Ok(Recorded::Dropped);
        }
        let payload = event.encode_to_vec();
        if payload.len() > MAX_RECORD_BYTES {
            return Err(SpoolError::EventTooLarge {
                event_uuid: event.event_uuid,
                bytes: payload.len(),
            });
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
        encode_record(&payload, &mut record);
        {
            let mut w = lock(&inner.writer);
            // Checked again under the lock, so concurrent callers cannot overshoot.
            if inner.depth.load(Ordering::Acquire) >= inner.config.high_water_mark {
                inner.metrics.dropped.inc();
                return Ok(Recorded::Dropped);
            }
            w.append(&record, inner.config.segment_bytes)
                .map_err(|source| SpoolError::AppendRecord {
                    path: w.path(w.seq),
                    source,
                })?;
            let depth = inner.depth.fetch_add(1, Ordering::AcqRel) + 1;
            inner
                .metrics
                .depth
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
            let due = match inner.config.fsync {
                FsyncPolicy::EveryRecord => true,
                FsyncPolicy::Interval(d) => w.last_sync.elapsed() >= d,
            };
            if due {
                w.sync().map_err(|source| SpoolError::SyncSegment {
                    path: w.path(w.seq),
                    source,
                })?;
            }
        }
        inner.notify.notify_one();
        Ok(Recorded::Spooled(event.event_uuid))
    }

    /// fsyncs what was recorded so far.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let mut w = lock(&self.inner.writer);
        w.sync().map_err(|source| SpoolError::SyncSegment {
            path: w.path(w.seq),
            source,
        })
    }

    fn sync_if_due(&self) {
        if let FsyncPolicy::Interval(d) = self.inner.config.fsync {
            let mut w = lock(&self.inner.writer);
            if w.dirty
                && w.last_sync.elapsed() >= d
                && let Err(e) = w.sync()
            {
                tracing::error!(error = %e, "event spool: fsync failed");
            }
        }
    }

    /// Reads up to `max_events` / about `max_bytes` from the cursor on (without moving it).
    fn read_batch(&self, max_events: usize, max_bytes: usize) -> Result<Batch, SpoolError> {
        let inner = &self.inner;
        let mut cur = *lock(&inner.cursor);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while events.len() < max_events && bytes < max_bytes {
            let (exists, open_end, next) = {
                let w = lock(&inner.writer);
                (
                    w.segments.contains(&cur.seq),
                    w.open_end(cur.seq),
                    w.segments.range(cur.seq + 1..).next().copied(),
                )
            };
            let path = inner.config.dir.join(segment_name(cur.seq));
            let end = match (exists, open_end) {
                (false, _) => 0,
                (true, Some(end)) => end,
                (true, None) => fs::metadata(&path)
                    .map_err(|source| SpoolError::ReadSegment {
                        path: path.clone(),
                        source,
                    })?
                    .len(),
            };
            if cur.offset >= end {
                match next {
                    // A closed segment read to its end: move on.
                    Some(n) if open_end.is_none() => {
                        cur = Cursor {
                            seq: n,
                            offset: HEADER_LEN,
                        };
                        continue;
                    }
                    _ => break,
                }
            }
            let read_err = |source| SpoolError::ReadSegment {
                path: path.clone(),
                source,
            };
            let mut file = File::open(&path).map_err(read_err)?;
            file.seek(SeekFrom::Start(cur.offset)).map_err(read_err)?;
            let mut reader = BufReader::with_capacity(256 * 1024, file.take(end - cur.offset));
            while cur.offset < end && events.len() < max_events && bytes < max_bytes {
                let damaged = |reason| SpoolError::DamagedRecord {
                    path: path.clone(),
                    offset: cur.offset,
                    reason,
                };
                let mut header = [0u8; RECORD_HEADER_LEN];
                read_exact_or_torn(&mut reader, &mut header)
                    .map_err(read_err)?
                    .map_err(damaged)?;
                let (len, stored) = parse_header(&header).map_err(damaged)?;
                let mut payload = vec![0u8; len];
                read_exact_or_torn(&mut reader, &mut payload)
                    .map_err(read_err)?
                    .map_err(damaged)?;
                check_crc(&payload, stored).map_err(damaged)?;
                let event = Event::decode(payload.as_slice())
                    .map_err(|e| damaged(RecordError::Decode(e.to_string())))?;
                events.push(event);
                bytes += len;
                cur.offset += (RECORD_HEADER_LEN + len) as u64;
            }
        }
        Ok(Batch { events, end: cur })
    }

    /// Moves the cursor to `end` after `count` events were acknowledged: writes the
    /// cursor, then deletes the segments before it.
    fn advance(&self, end: Cursor, count: u64) -> Result<(), SpoolError> {
        let inner = &self.inner;
        let dir = &inner.config.dir;
        let mut cursor = lock(&inner.cursor);
        if end > *cursor {
            write_cursor(dir, end).map_err(|source| SpoolError::AdvanceCursor {
                path: dir.join(CURSOR_FILE),
                source,
            })?;
            *cursor = end;
        }
        let before = inner
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some(d.saturating_sub(count))
            })
            .unwrap_or_default();
        let depth = before.saturating_sub(count);
        inner
            .metrics
            .depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        let mut w = lock(&inner.writer);
        let done: Vec<u64> = w.segments.range(..end.seq).copied().collect();
        for seq in &done {
            let path = w.path(*seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(SpoolError::AdvanceCursor { path, source }),
            }
            w.segments.remove(seq);
        }
        if !done.is_empty() {
            sync_dir(dir).map_err(|source| SpoolError::AdvanceCursor {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Skips the rest of a damaged segment (forcing the writer onto a new one if it
    /// was being written), then recounts the depth.
    fn skip_damaged(&self, seq: u64) -> Result<(), SpoolError> {
        let inner = &self.inner;
        let next = {
            let mut w = lock(&inner.writer);
            if w.open_end(seq).is_some() {
                w.rotate().map_err(|source| SpoolError::AppendRecord {
                    path: w.path(w.seq + 1),
                    source,
                })?;
            }
            w.segments.range(seq + 1..).next().copied()
        };
        let Some(next) = next else {
            return Ok(());
        };
        let end = Cursor {
            seq: next,
            offset: HEADER_LEN,
        };
        self.advance(end, 0)?;
        // Recount from the new cursor.
        let w = lock(&inner.writer);
        let mut depth = 0u64;
        for s in w.segments.range(next..) {
            let path = w.path(*s);
            let scan =
                scan_segment(&path).map_err(|source| SpoolError::ReadSegment { path, source })?;
            depth += scan.offsets.len() as u64;
        }
        inner.depth.store(depth, Ordering::Release);
        inner
            .metrics
            .depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        inner.metrics.damaged.inc();
        Ok(())
    }

    /// Starts the drain task: batches go to sf-database through `client` until
    /// `shutdown` triggers, then the rest is flushed for at most
    /// [`DrainConfig::shutdown_flush`]. One drain task per spool at a time. Needs a
    /// Tokio runtime.
    pub fn spawn_drain(
        &self,
        client: GatewayClient,
        config: DrainConfig,
        shutdown: Shutdown,
    ) -> Result<tokio::task::JoinHandle<DrainReport>, SpoolError> {
        if self.inner.draining.swap(true, Ordering::AcqRel) {
            return Err(SpoolError::AlreadyDraining(self.inner.config.dir.clone()));
        }
        /// Clears the flag when the task ends, also when it is aborted.
        struct Draining(Arc<Inner>);
        impl Drop for Draining {
            fn drop(&mut self) {
                self.0.draining.store(false, Ordering::Release);
            }
        }
        let guard = Draining(self.inner.clone());
        let spool = self.clone();
        Ok(tokio::spawn(async move {
            let _guard = guard;
            drain(spool, client, config, shutdown).await
        }))
    }
}

/// Fills `buf`; `Ok(Err(Truncated))` if the data ends first.
fn read_exact_or_torn(
    reader: &mut impl Read,
    buf: &mut [u8],
) -> io::Result<Result<(), RecordError>> {
    let mut have = 0;
    while have < buf.len() {
        match reader.read(&mut buf[have..]) {
            Ok(0) => {
                return Ok(Err(RecordError::Truncated {
                    have,
                    need: buf.len(),
                }));
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(()))
}

fn read_cursor(path: &Path) -> Option<Cursor> {
    let data = fs::read(path).ok()?;
    if data.len() != CURSOR_LEN {
        tracing::warn!(path = %path.display(), "event spool: damaged cursor; re-sending from the oldest segment");
        return None;
    }
    let stored = u32::from_le_bytes(data[16..20].try_into().ok()?);
    if CRC.checksum(&data[..16]) != stored {
        tracing::warn!(path = %path.display(), "event spool: cursor checksum mismatch; re-sending from the oldest segment");
        return None;
    }
    Some(Cursor {
        seq: u64::from_le_bytes(data[0..8].try_into().ok()?),
        offset: u64::from_le_bytes(data[8..16].try_into().ok()?),
    })
}

fn write_cursor(dir: &Path, cursor: Cursor) -> io::Result<()> {
    let mut data = Vec::with_capacity(CURSOR_LEN);
    data.extend_from_slice(&cursor.seq.to_le_bytes());
    data.extend_from_slice(&cursor.offset.to_le_bytes());
    data.extend_from_slice(&CRC.checksum(&data).to_le_bytes());
    let tmp = dir.join(CURSOR_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&data)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    sync_dir(dir)
}

/// How the drain task sends.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Events per `RecordEventBatch` (the store writes 500 rows per statement).
    pub batch_size: usize,
    /// Payload bytes per batch, approximately (one event may exceed it).
    pub batch_bytes: usize,
    /// How long to wait after the first new event for more to batch with it.
    pub linger: Duration,
    /// First wait after a failed batch; doubles per failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// How long to keep sending after shutdown is triggered.
    pub shutdown_flush: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batch_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(50),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            shutdown_flush: Duration::from_secs(5),
        }
    }
}

/// What a drain task did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Events acknowledged (inserted or already stored).
    pub sent: u64,
    /// Of those, events sf-database already had (re-sent after a crash).
    pub duplicates: u64,
    /// Events sf-database rejected as invalid (discarded).
    pub rejected: u64,
    /// Events still spooled when the task stopped.
    pub remaining: u64,
}

/// Equal jitter: half of `base` plus a random part of the other half.
fn jittered(base: Duration) -> Duration {
    let half = base / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=nanos))
}

async fn blocking<T, F>(spool: &EventSpool, f: F) -> Result<T, SpoolError>
where
    T: Send + 'static,
    F: FnOnce(&EventSpool) -> Result<T, SpoolError> + Send + 'static,
{
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || f(&spool))
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
}

async fn send(
    client: &GatewayClient,
    events: Vec<Event>,
) -> Result<RecordEventBatchReply, ClientError> {
    let request = RecordEventBatchRequest { events };
    client
        .call("record_event_batch", |mut g| {
            let request = request.clone();
            async move { g.record_event_batch(request).await }
        })
        .await
}

/// Outcome of sending one batch.
enum Sent {
    /// Acknowledged: (acknowledged, duplicates, rejected).
    Acked(u64, u64, u64),
    /// Not acknowledged; retry later.
    Failed(ClientError),
}

/// Sends `events`; a batch refused as invalid is re-sent one event at a time and only
/// the individually refused events are discarded.
async fn send_batch(client: &GatewayClient, metrics: &SpoolMetrics, events: Vec<Event>) -> Sent {
    let n = events.len() as u64;
    match send(client, events.clone()).await {
        Ok(reply) => Sent::Acked(n, u64::from(reply.skipped), 0),
        Err(e) if e.code() == Some(Code::InvalidArgument) => {
            tracing::warn!(error = %e, "event spool: batch rejected; sending its events one by one");
            let (mut acked, mut dups, mut rejected) = (0, 0, 0);
            for event in events {
                let uuid = event.event_uuid.clone();
                match send(client, vec![event]).await {
                    Ok(reply) => {
                        acked += 1;
                        dups += u64::from(reply.skipped);
                    }
                    Err(e) if e.code() == Some(Code::InvalidArgument) => {
                        tracing::error!(event_uuid = %uuid, error = %e, "event spool: sf-database rejected an event; discarding it");
                        metrics.rejected.inc();
                        rejected += 1;
                    }
                    Err(e) => return Sent::Failed(e),
                }
            }
            Sent::Acked(acked + rejected, dups, rejected)
        }
        Err(e) => Sent::Failed(e),
    }
}

/// Reads, sends and acknowledges one batch; `Ok(None)` when the spool is empty.
async fn drain_one(
    spool: &EventSpool,
    client: &GatewayClient,
    config: &DrainConfig,
    report: &mut DrainReport,
) -> Result<Option<Result<(), ClientError>>, SpoolError> {
    let (max, bytes) = (config.batch_size.max(1), config.batch_bytes.max(1));
    let batch = match blocking(spool, move |s| s.read_batch(max, bytes)).await {
        Ok(batch) => batch,
        Err(SpoolError::DamagedRecord {
            path,
            offset,
            reason,
        }) => {
            tracing::error!(segment = %path.display(), offset, %reason, "event spool: damaged record; skipping the rest of its segment");
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .unwrap_or(0);
            blocking(spool, move |s| s.skip_damaged(seq)).await?;
            return Ok(Some(Ok(())));
        }
        Err(e) => return Err(e),
    };
    if batch.events.is_empty() {
        // Persist a cursor that moved past drained segments (deleting them).
        let end = batch.end;
        if end != *lock(&spool.inner.cursor) {
            blocking(spool, move |s| s.advance(end, 0)).await?;
        }
        return Ok(None);
    }
    let end = batch.end;
    match send_batch(client, &spool.inner.metrics, batch.events).await {
        Sent::Acked(count, dups, rejected) => {
            blocking(spool, move |s| s.advance(end, count)).await?;
            spool.inner.metrics.sent.inc_by(count - rejected);
            report.sent += count - rejected;
            report.duplicates += dups;
            report.rejected += rejected;
            Ok(Some(Ok(())))
        }
        Sent::Failed(e) => Ok(Some(Err(e))),
    }
}

async fn drain(
    spool: EventSpool,
    client: GatewayClient,
    config: DrainConfig,
    shutdown: Shutdown,
) -> DrainReport {
    let mut report = DrainReport::default();
    let mut backoff = config.initial_backoff;
    let idle_tick = match spool.inner.config.fsync {
        FsyncPolicy::Interval(d) => d.max(Duration::from_millis(10)),
        FsyncPolicy::EveryRecord => Duration::from_secs(5),
    };
    while !shutdown.is_triggered() {
        spool.sync_if_due();
        let wait = match drain_one(&spool, &client, &config, &mut report).await {
            Ok(Some(Ok(()))) => {
                backoff = config.initial_backoff;
                continue;
            }
            Ok(None) => {
                tokio::select! {
                    () = spool.inner.notify.notified() => config.linger,
                    () = tokio::time::sleep(idle_tick) => Duration::ZERO,
                    () = shutdown.wait() => break,
                }
            }
            Ok(Some(Err(e))) => {
                let wait = jittered(backoff);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, depth = spool.depth(), "event spool: sf-database did not take a batch");
                backoff = (backoff * 2).min(config.max_backoff);
                wait
            }
            Err(e) => {
                let wait = jittered(backoff);
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "event spool: local spool error");
                backoff = (backoff * 2).min(config.max_backoff);
                wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.wait() => break,
            }
        }
    }
    // Shutdown: flush what we can within the bound.
    let deadline = tokio::time::Instant::now() + config.shutdown_flush;
    loop {
        let step =
            tokio::time::timeout_at(deadline, drain_one(&spool, &client, &config, &mut report))
                .await;
        match step {
            Ok(Ok(Some(Ok(())))) => continue,
            Ok(Ok(None)) => break,
            Ok(Ok(Some(Err(e)))) => {
                tracing::warn!(error = %e, depth = spool.depth(), "event spool: cannot flush at shutdown; events stay spooled");
                break;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "event spool: local spool error at shutdown");
                break;
            }
            Err(_) => {
                tracing::warn!(
                    depth = spool.depth(),
                    "event spool: shutdown flush timed out; events stay spooled"
                );
                break;
            }
        }
    }
    if let Err(e) = spool.sync() {
        tracing::error!(error = %e, "event spool: final fsync failed");
    }
    report.remaining = spool.depth();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> SpoolConfig {
        let mut c = SpoolConfig::new(dir);
        c.fqdn = "test-node".into();
        c
    }

    fn open(dir: &Path) -> EventSpool {
        EventSpool::open(config(dir), SpoolMetrics::default()).expect("open spool")
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        v.sort();
        v
    }

    fn record_n(spool: &EventSpool, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                match spool
                    .record(new_event(
                        "audit",
                        format!("event {i}"),
                        &[("instance", "i-1")],
                    ))
                    .expect("record")
                {
                    Recorded::Spooled(u) => u,
                    Recorded::Dropped => panic!("dropped"),
                }
            })
            .collect()
    }

    #[test]
    fn a_record_round_trips() {
        let mut buf = Vec::new();
        encode_record(b"hello", &mut buf);
        encode_record(b"", &mut buf);
        let (p, n) = decode_record(&buf).expect("ok").expect("some");
        assert_eq!((p, n), (&b"hello"[..], 13));
        let (p, m) = decode_record(&buf[n..]).expect("ok").expect("some");
        assert_eq!((p, m), (&b""[..], 8));
        assert_eq!(decode_record(&buf[n + m..]), Ok(None));
    }

    #[test]
    fn a_torn_record_is_truncated_at_every_cut() {
        let mut buf = Vec::new();
        encode_record(b"payload bytes", &mut buf);
        for cut in 1..buf.len() {
            match decode_record(&buf[..cut]) {
                Err(RecordError::Truncated { have, need }) => {
                    assert_eq!(have, cut);
                    assert!(need > cut);
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_mismatch() {
        let mut buf = Vec::new();
        encode_record(b"payload bytes", &mut buf);
        for i in RECORD_HEADER_LEN..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode_record(&bad), Err(RecordError::Checksum { .. })),
                "byte {i}"
            );
        }
        let mut bad = buf.clone();
        bad[4] ^= 1;
        assert!(matches!(
            decode_record(&bad),
            Err(RecordError::Checksum { .. })
        ));
    }

    #[test]
    fn an_absurd_length_is_rejected_before_reading() {
        let mut buf = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        buf.extend_from_slice(b"xx");
        assert_eq!(decode_record(&buf), Err(RecordError::TooLong(0x7fff_ffff)));
    }

    #[test]
    fn events_survive_reopening_and_a_torn_tail_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = open(dir.path());
        let uuids = record_n(&spool, 10);
        assert_eq!(spool.depth(), 10);
        drop(spool);
        // A torn write: half a header at the end of the segment.
        let seg = segments(dir.path()).pop().expect("a segment");
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&[7, 0, 0]).expect("append garbage");
        drop(f);
        let metrics = SpoolMetrics::default();
        let spool = EventSpool::open(config(dir.path()), metrics.clone()).expect("reopen");
        assert_eq!(spool.depth(), 10);
        assert_eq!(metrics.damaged.get(), 1);
        assert_eq!(metrics.depth.get(), 10);
        let batch = spool.read_batch(100, usize::MAX).expect("read");
        let got: Vec<String> = batch.events.iter().map(|e| e.event_uuid.clone()).collect();
        assert_eq!(got, uuids);
        assert!(
            batch
                .events
                .iter()
                .all(|e| e.fqdn == "test-node" && e.timestamp > 0.0)
        );
        // Recording continues in a new segment after the repaired one.
        record_n(&spool, 1);
        assert_eq!(segments(dir.path()).len(), 2);
        assert_eq!(
            spool
                .read_batch(100, usize::MAX)
                .expect("read")
                .events
                .len(),
            11
        );
    }

    #[test]
    fn a_checksum_mismatch_drops_the_rest_of_that_segment_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = open(dir.path());
        record_n(&spool, 5);
        drop(spool);
        let spool = open(dir.path());
        let later = record_n(&spool, 3);
        drop(spool);
        // Corrupt the payload of the 3rd record of the first segment.
        let first = segments(dir.path()).remove(0);
        let scan = scan_segment(&first).expect("scan");
        assert_eq!(scan.offsets.len(), 5);
        let mut data = fs::read(&first).expect("read");
        data[scan.offsets[2] as usize + RECORD_HEADER_LEN + 1] ^= 0xff;
        fs::write(&first, &data).expect("write");
        let spool = open(dir.path());
        assert_eq!(spool.depth(), 2 + 3);
        assert_eq!(fs::metadata(&first).expect("meta").len(), scan.offsets[2]);
        let got: Vec<String> = spool
            .read_batch(100, usize::MAX)
            .expect("read")
            .events
            .iter()
            .map(|e| e.event_uuid.clone())
            .collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[2..], later[..]);
    }

    #[test]
    fn advancing_deletes_acknowledged_segments_and_persists_the_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        c.segment_bytes = 512;
        let spool = EventSpool::open(c.clone(), SpoolMetrics::default()).expect("open");
        let uuids = record_n(&spool, 40);
        let n_segments = segments(dir.path()).len();
        assert!(n_segments > 3, "{n_segments}");
        let batch = spool.read_batch(25, usize::MAX).expect("read");
        assert_eq!(batch.events.len(), 25);
        spool.advance(batch.end, 25).expect("advance");
        assert_eq!(spool.depth(), 15);
        assert!(segments(dir.path()).len() < n_segments);
        drop(spool);
        let spool = EventSpool::open(c, SpoolMetrics::default()).expect("reopen");
        assert_eq!(spool.depth(), 15);
        let rest = spool.read_batch(100, usize::MAX).expect("read");
        let got: Vec<String> = rest.events.iter().map(|e| e.event_uuid.clone()).collect();
        assert_eq!(got, uuids[25..]);
        spool.advance(rest.end, 15).expect("advance");
        assert_eq!(spool.depth(), 0);
        assert!(
            spool
                .read_batch(100, usize::MAX)
                .expect("read")
                .events
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_cursor_resends_from_the_oldest_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = open(dir.path());
        record_n(&spool, 4);
        let batch = spool.read_batch(2, usize::MAX).expect("read");
        spool.advance(batch.end, 2).expect("advance");
        drop(spool);
        fs::write(dir.path().join(CURSOR_FILE), b"garbage").expect("write");
        let spool = open(dir.path());
        assert_eq!(spool.depth(), 4);
    }

    #[test]
    fn the_high_water_mark_drops_new_events_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        c.high_water_mark = 3;
        let metrics = SpoolMetrics::default();
        let spool = EventSpool::open(c, metrics.clone()).expect("open");
        let first = record_n(&spool, 3);
        for _ in 0..2 {
            assert_eq!(
                spool
                    .record(new_event("audit", "late", &[]))
                    .expect("record"),
                Recorded::Dropped
            );
        }
        assert_eq!(metrics.dropped.get(), 2);
        assert_eq!(metrics.depth.get(), 3);
        let batch = spool.read_batch(100, usize::MAX).expect("read");
        let got: Vec<String> = batch.events.iter().map(|e| e.event_uuid.clone()).collect();
        assert_eq!(got, first, "the oldest events are kept");
        spool.advance(batch.end, 3).expect("advance");
        assert!(matches!(
            spool
                .record(new_event("audit", "again", &[]))
                .expect("record"),
            Recorded::Spooled(_)
        ));
    }

    #[test]
    fn metrics_are_exposed_with_their_names() {
        let mut metrics = sf_daemon::Metrics::new("sf-test", "0");
        let m = SpoolMetrics::default();
        m.register(metrics.registry_mut());
        m.depth.set(7);
        m.dropped.inc();
        let text = sf_daemon::metrics::encode_text(metrics.registry()).expect("encode");
        assert!(
            text.lines().any(|l| l == "eventlog_spool_depth 7"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "eventlog_spool_dropped_total 1"),
            "{text}"
        );
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j <= Duration::from_millis(100),
                "{j:?}"
            );
        }
    }

    #[test]
    fn spool_args_validate_and_configure() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct C {
            #[command(flatten)]
            spool: SpoolArgs,
        }
        let c = C::parse_from([
            "x",
            "--spool-high-water-mark",
            "5",
            "--spool-fsync-interval-ms",
            "0",
        ]);
        assert!(c.spool.validate().is_ok());
        let cfg = c.spool.config("/tmp/x");
        assert_eq!(cfg.high_water_mark, 5);
        assert_eq!(cfg.fsync, FsyncPolicy::EveryRecord);
        let c = C::parse_from(["x", "--spool-high-water-mark", "0"]);
        let err = c.spool.validate().expect_err("zero");
        assert!(err.to_string().contains(HIGH_WATER_MARK_KEY), "{err}");
    }

    #[tokio::test]
    async fn shutdown_with_the_database_down_is_bounded_and_keeps_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = open(dir.path());
        record_n(&spool, 20);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let policy = crate::RetryPolicy {
            attempts: 1,
            ..crate::RetryPolicy::default()
        };
        let client = GatewayClient::from_host_list(&addr.to_string(), "0123456789abcdef", policy)
            .expect("client");
        let shutdown = Shutdown::new();
        let config = DrainConfig {
            shutdown_flush: Duration::from_millis(500),
            ..DrainConfig::default()
        };
        let drain = spool
            .spawn_drain(client.clone(), config.clone(), shutdown.clone())
            .expect("drain");
        assert!(matches!(
            spool.spawn_drain(client, config, shutdown.clone()),
            Err(SpoolError::AlreadyDraining(_))
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        shutdown.trigger();
        let report = tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .expect("drain stops in time")
            .expect("drain task");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(report.sent, 0);
        assert_eq!(report.remaining, 20);
        drop(spool);
        assert_eq!(open(dir.path()).depth(), 20);
    }
}
