//! The write-ahead log: every row the agent accepts is here, durable, before it counts.
//!
//! Segments are files `wal/<seq>.wal` (20 digits) that start with an 8-byte magic and hold
//! records:
//!
//! ```text
//! record := len:u32 LE, crc32(body):u32 LE, body[len]
//! body   := kind:u8, time_us:i64 LE, varint len + table, varint len + device,
//!           varint len + owner, payload (PSON)
//! ```
//!
//! The magic's version byte says which body: version 1 segments (written before rows
//! carried their user) have no `owner`; they are read as rows whose user is not known.
//! From version 2 on, a record's CRC also covers the version byte.
//!
//! Writes go through a buffer; [`Wal::flush`] hands them to the OS and the file from
//! [`Wal::sync_handle`] is fsynced off the async threads, so one fsync covers every row of a
//! batch (group commit). On open, every segment is read back; the first record that is short
//! or fails its checksum ends that segment, and the file is cut there (a torn tail). A new
//! segment is started on open and whenever the buffer is sealed ([`Wal::rotate`]); sealed
//! segments are deleted once their rows are safe in Parquet ([`remove_segments_through`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};
use twinlake_sdk::varint;

const MAGIC: &[u8; 8] = b"TLWAL\x02\r\n";
/// The magic of segments written before records carried an owner.
const MAGIC_V1: &[u8; 8] = b"TLWAL\x01\r\n";
const HEADER: usize = 8;
/// A record larger than this is damage, not data.
pub const MAX_RECORD: usize = 16 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Stream data: flattened after taking off the `{"out": …}` wrapper.
    Stream = 0,
    /// A bucket write or another record stored as is.
    Record = 1,
    /// A source message whose rows precede this record: `table` is the source, the payload
    /// is the message id (u16 LE) and a hash of it (u64 LE). Not a row.
    Delivery = 2,
    /// The confirmation of a [`RecordKind::Delivery`] is about to be sent: `table` is the
    /// source, the payload the message id (u16 LE). Not a row.
    Acked = 3,
}

impl RecordKind {
    /// Whether records of this kind are rows (the rest is bookkeeping).
    pub fn is_row(self) -> bool {
        matches!(self, Self::Stream | Self::Record)
    }
}

/// One log record, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRecord<'a> {
    pub kind: RecordKind,
    pub time_us: i64,
    pub table: &'a str,
    pub device: &'a str,
    /// The user the device belongs to; empty when not known (a version 1 segment).
    pub owner: &'a str,
    /// The PSON payload, as the device sent it.
    pub payload: &'a [u8],
}

impl<'a> WalRecord<'a> {
    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.time_us.to_le_bytes());
        put_str(out, self.table);
        put_str(out, self.device);
        put_str(out, self.owner);
        out.extend_from_slice(self.payload);
    }

    /// Parses a record body of a segment of `version` (1 or 2); `None` if it is malformed.
    pub fn decode_body(body: &'a [u8], version: u8) -> Option<Self> {
        let (&kind, rest) = body.split_first()?;
        let kind = match kind {
            0 => RecordKind::Stream,
            1 => RecordKind::Record,
            2 => RecordKind::Delivery,
            3 => RecordKind::Acked,
            _ => return None,
        };
        let (time, rest) = rest.split_first_chunk::<8>()?;
        let (table, rest) = get_str(rest)?;
        let (device, rest) = get_str(rest)?;
        let (owner, payload) = if version >= 2 { get_str(rest)? } else { ("", rest) };
        Some(Self {
            kind,
            time_us: i64::from_le_bytes(*time),
            table,
            device,
            owner,
            payload,
        })
    }

    /// The encoded record, header included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        self.encode_body(out);
        let body = out.get(start + 8..).unwrap_or_default();
        let len = (body.len() as u32).to_le_bytes();
        let crc = checksum(2, body).to_le_bytes();
        let header = len.into_iter().chain(crc);
        for (slot, b) in out.iter_mut().skip(start).zip(header) {
            *slot = b;
        }
    }
}

/// A record's checksum in a segment of `version`: from version 2 on it covers the version
/// too, so damage to the magic's version byte cannot make records read in another layout.
fn checksum(version: u8, body: &[u8]) -> u32 {
    if version < 2 {
        return crc32fast::hash(body);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&[version]);
    h.update(body);
    h.finalize()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // A Vec sink never runs out of room.
    let _ = varint::write_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn get_str(buf: &[u8]) -> Option<(&str, &[u8])> {
    let (n, used) = varint::decode_u32(buf).ok()?;
    let rest = buf.get(used..)?;
    let (s, rest) = rest.split_at_checked(usize::try_from(n).ok()?)?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

/// Walks a segment's bytes: calls `f` for every valid record and returns how many bytes
/// were valid. Stops at the first damage; never panics.
pub fn scan_segment<'a>(bytes: &'a [u8], mut f: impl FnMut(WalRecord<'a>)) -> usize {
    let version = match bytes.get(..HEADER) {
        Some(m) if m == MAGIC.as_slice() => 2,
        Some(m) if m == MAGIC_V1.as_slice() => 1,
        _ => return 0,
    };
    let mut pos = HEADER;
    loop {
        let Some((len, crc)) = bytes
            .get(pos..)
            .and_then(|b| b.split_first_chunk::<4>())
            .and_then(|(len, rest)| Some((len, rest.first_chunk::<4>()?)))
        else {
            return pos;
        };
        let len = u32::from_le_bytes(*len) as usize;
        let crc = u32::from_le_bytes(*crc);
        if len > MAX_RECORD {
            return pos;
        }
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            return pos;
        };
        if checksum(version, body) != crc {
            return pos;
        }
        let Some(rec) = WalRecord::decode_body(body, version) else {
            return pos;
        };
        f(rec);
        pos += 8 + len;
    }
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut off torn or damaged segment tails.
    pub truncated_bytes: u64,
}

/// The write-ahead log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    seq: u64,
    file: BufWriter<File>,
    size: u64,
    segment_bytes: u64,
    scratch: Vec<u8>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The sequence numbers of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(seq) = stem.parse::<u64>()
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Deletes the segments at or before `seq` in `dir`.
pub fn remove_segments_through(dir: &Path, seq: u64) -> std::io::Result<()> {
    for s in list_segments(dir)? {
        if s <= seq {
            std::fs::remove_file(segment_path(dir, s))?;
        }
    }
    sync_dir(dir)
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never
/// a torn one: a temporary file created with `mode`, fsynced, renamed over `path`, and the
/// directory fsynced.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    // A temporary file left by a crash keeps its old mode when reopened: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => Ok(()),
    }
}

/// fsyncs a directory so new and removed entries are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens the log in `dir`, replaying every record of segments after `sealed_through`
    /// into `f` (with its segment number) and deleting the segments at or before it. Then
    /// starts a fresh segment after the highest one seen (or `sealed_through`).
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        sealed_through: u64,
        mut f: impl FnMut(u64, WalRecord<'_>),
    ) -> std::io::Result<(Self, Replay)> {
        std::fs::create_dir_all(dir)?;
        let mut replay = Replay::default();
        let mut last = sealed_through;
        for seq in list_segments(dir)? {
            last = last.max(seq);
            let path = segment_path(dir, seq);
            if seq <= sealed_through {
                std::fs::remove_file(&path)?;
                continue;
            }
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let valid = scan_segment(&bytes, |r| {
                replay.records += 1;
                f(seq, r);
            });
            replay.segments += 1;
            if valid < bytes.len() {
                let cut = (bytes.len() - valid) as u64;
                warn!(segment = %path.display(), valid, cut, "WAL segment has a torn or damaged tail; cutting it");
                replay.truncated_bytes += cut;
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(valid as u64)?;
                file.sync_all()?;
            }
        }
        if replay.records > 0 {
            info!(records = replay.records, segments = replay.segments, "WAL replayed");
        }
        let (file, size) = Self::create_segment(dir, last + 1)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                seq: last + 1,
                file,
                size,
                segment_bytes: segment_bytes.max(4096),
                scratch: Vec::new(),
            },
            replay,
        ))
    }

    fn create_segment(dir: &Path, seq: u64) -> std::io::Result<(BufWriter<File>, u64)> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(dir, seq))?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok((BufWriter::with_capacity(256 << 10, file), HEADER as u64))
    }

    /// The segment being written.
    pub fn current_segment(&self) -> u64 {
        self.seq
    }

    /// Appends a record to the write buffer. It is durable after the next
    /// [`flush`](Self::flush) and a sync of [`sync_handle`](Self::sync_handle).
    pub fn append(&mut self, rec: &WalRecord<'_>) -> std::io::Result<()> {
        self.scratch.clear();
        rec.encode(&mut self.scratch);
        self.file.write_all(&self.scratch)?;
        self.size += self.scratch.len() as u64;
        Ok(())
    }

    /// Whether the segment has reached its size.
    pub fn segment_full(&self) -> bool {
        self.size >= self.segment_bytes
    }

    /// Hands buffered records to the OS.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// A handle to fsync (`sync_data`) the current segment with, off the async threads.
    pub fn sync_handle(&self) -> std::io::Result<File> {
        self.file.get_ref().try_clone()
    }

    /// Flushes and fsyncs, here and now.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    /// Syncs the current segment and starts the next. Returns the number of the last
    /// finished segment: every record so far is in segments at or before it.
    pub fn rotate(&mut self) -> std::io::Result<u64> {
        self.sync()?;
        let done = self.seq;
        let (file, size) = Self::create_segment(&self.dir, done + 1)?;
        self.file = file;
        self.size = size;
        self.seq = done + 1;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends record `i` (device `dev<i>`, a one-byte PSON payload) to table `table`.
    fn put(wal: &mut Wal, i: i64, table: &str) {
        let device = format!("dev{i}");
        let payload = [0x08 | ((i as u8) & 0x07)];
        let kind = RecordKind::Stream;
        wal.append(&WalRecord {
            kind,
            time_us: i,
            table,
            device: &device,
            owner: "acme",
            payload: &payload,
        })
        .unwrap();
    }

    #[test]
    fn version_1_segments_read_as_rows_of_no_known_user() {
        // A version 1 record: kind, time, table, device, payload (no owner).
        let mut body = vec![RecordKind::Record as u8];
        body.extend_from_slice(&7i64.to_le_bytes());
        body.extend_from_slice(b"\x01t\x02d1\x08");
        let mut seg = MAGIC_V1.to_vec();
        seg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        seg.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        seg.extend_from_slice(&body);
        let mut got = Vec::new();
        assert_eq!(
            scan_segment(&seg, |r| got.push((
                r.time_us,
                r.table,
                r.device,
                r.owner,
                r.payload.to_vec()
            ))),
            seg.len()
        );
        assert_eq!(got, [(7, "t", "d1", "", vec![0x08])]);
        // The same body under today's magic is short of its owner: damage, not a row.
        seg[5] = 2;
        assert_eq!(scan_segment(&seg, |_| panic!("no record")), HEADER);
    }

    fn collect(dir: &Path, sealed: u64) -> (Vec<(u64, i64, String)>, Replay) {
        let mut got = Vec::new();
        let (_wal, replay) = Wal::open(dir, 1 << 20, sealed, |seg, r| {
            got.push((seg, r.time_us, r.device.to_owned()))
        })
        .unwrap();
        (got, replay)
    }

    #[test]
    fn records_survive_reopen_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0, |_, _| {}).unwrap();
        assert_eq!(wal.current_segment(), 1);
        for i in 0..3 {
            put(&mut wal, i, "t");
        }
        assert_eq!(wal.rotate().unwrap(), 1);
        put(&mut wal, 9, "b");
        wal.sync().unwrap();
        drop(wal);
        let (got, replay) = collect(dir.path(), 0);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![0, 1, 2, 9]);
        assert_eq!(got[3].0, 2);
        assert_eq!(replay.records, 4);
        // Sealed through 1: segment 1 is dropped, segment 2 replays.
        let (got, _) = collect(dir.path(), 1);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![9]);
        assert_eq!(list_segments(dir.path()).unwrap().first(), Some(&2));
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0, |_, _| {}).unwrap();
        for i in 0..5 {
            put(&mut wal, i, "t");
        }
        wal.sync().unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (got, replay) = collect(dir.path(), 0);
        assert_eq!(got.len(), 4);
        assert!(replay.truncated_bytes > 0);
        // The cut is durable: a second open finds nothing more to cut.
        let (got, replay) = collect(dir.path(), 0);
        assert_eq!(got.len(), 4);
        assert_eq!(replay.truncated_bytes, 0);
    }
}
