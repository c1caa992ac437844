//! On-store object envelope, keys and decoding limits.
//!
//! Every object is `magic | version | kind | flags | 0 | plain_len | body_len | [nonce] | body |
//! blake3(all before)`. The trailing checksum lets `fsck` and readers reject torn or flipped
//! objects before they reach zstd or the AEAD; the declared lengths are checked against per-kind
//! limits first so a crafted object cannot make a reader allocate more than the limit.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::SnapshotError;

pub(crate) const MAGIC: &[u8; 4] = b"HSNP";
/// 2: chunks live in pack objects (see `pack.rs`); 1 (one object per chunk) is refused.
pub(crate) const VERSION: u8 = 2;
const HEADER_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const SUM_LEN: usize = 32;
pub(crate) const MIN_OBJECT_LEN: usize = HEADER_LEN + SUM_LEN;

const FLAG_ZSTD: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;

/// Content-defined chunking parameters. Part of the store format: changing them breaks dedup.
pub(crate) const CHUNK_MIN: u32 = 256 * 1024;
pub(crate) const CHUNK_AVG: u32 = 1024 * 1024;
pub(crate) const CHUNK_MAX: u32 = 4 * 1024 * 1024;

/// Largest tree (metadata) blob a reader accepts.
pub(crate) const MAX_TREE_LEN: u64 = 512 * 1024 * 1024;
/// Largest snapshot record / config / lease a reader accepts.
pub(crate) const MAX_SMALL_OBJECT: usize = 16 * 1024 * 1024;
/// Largest stored size of any object (chunk plus envelope and worst-case zstd expansion).
pub(crate) const MAX_STORED_OBJECT: usize = CHUNK_MAX as usize + 64 * 1024;
/// zstd level for every object. Level 3 (zstd's default, about what restic's "auto" uses)
/// costs little next to reading the files, and bundled small files give it context.
pub(crate) const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Chunk = 1,
    Record = 2,
    Config = 3,
    Lease = 4,
    /// A list of (chunk -> pack, offset, length); see `pack.rs`.
    Index = 5,
    /// A workspace's newest placement generation; see `fence.rs`.
    Fence = 6,
}

impl Kind {
    fn max_plain(self) -> usize {
        match self {
            Kind::Chunk => CHUNK_MAX as usize,
            _ => MAX_SMALL_OBJECT,
        }
    }
}

/// Per-installation secret. Chunk ids become keyed BLAKE3 hashes and objects are sealed with
/// XChaCha20-Poly1305, so a store alone reveals neither content nor which known files it holds.
#[derive(Clone)]
pub struct Key {
    master: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn generate() -> Key {
        let mut master = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut master);
        Key { master }
    }

    pub fn from_bytes(master: [u8; 32]) -> Key {
        Key { master }
    }

    /// Loads the hex key at `path`, creating it (mode 0600) when absent. Refuses a key file that
    /// group or others can access.
    pub fn load_or_create(path: &Path) -> Result<Key, SnapshotError> {
        let kerr = |reason: String| SnapshotError::Key {
            path: path.to_path_buf(),
            reason,
        };
        match fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.is_file() {
                    return Err(kerr("not a regular file".into()));
                }
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(kerr(format!(
                        "mode {:o} is too open, expected 0600",
                        meta.permissions().mode() & 0o7777
                    )));
                }
                let text = fs::read_to_string(path).map_err(|e| kerr(e.to_string()))?;
                let raw = hex::decode(text.trim()).map_err(|e| kerr(format!("bad hex: {e}")))?;
                let master: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| kerr("key must be 32 bytes".into()))?;
                Ok(Key { master })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| kerr(e.to_string()))?;
                f.write_all(format!("{}\n", hex::encode(key.master)).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| kerr(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(kerr(e.to_string())),
        }
    }

    pub(crate) fn derive(&self) -> Keys {
        Keys {
            id: blake3::derive_key("hearth-snapshot 2025 chunk id", &self.master),
            enc: blake3::derive_key("hearth-snapshot 2025 object encryption", &self.master),
            check: blake3::derive_key("hearth-snapshot 2025 key check", &self.master),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Keys {
    pub id: [u8; 32],
    pub enc: [u8; 32],
    pub check: [u8; 32],
}

/// 32-byte chunk id: BLAKE3 of the plaintext, keyed when the store is encrypted.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.hex())
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.hex())
    }
}

pub(crate) fn chunk_id(keys: Option<&Keys>, data: &[u8]) -> ChunkId {
    match keys {
        Some(k) => ChunkId(*blake3::keyed_hash(&k.id, data).as_bytes()),
        None => ChunkId(*blake3::hash(data).as_bytes()),
    }
}

/// Compresses with a per-thread context: creating one per object costs more than compressing
/// a small file.
fn compress(plain: &[u8]) -> Option<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CTX.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut()?.compress(plain).ok()
    })
}

/// Decompresses into at most `cap` bytes, reusing a per-thread context.
fn decompress(body: &[u8], cap: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CTX.with(|c| match c.try_borrow_mut() {
        Ok(mut c) => {
            if c.is_none() {
                *c = Some(zstd::bulk::Decompressor::new()?);
            }
            match c.as_mut() {
                Some(d) => d.decompress(body, cap),
                None => zstd::bulk::decompress(body, cap),
            }
        }
        Err(_) => zstd::bulk::decompress(body, cap),
    })
}

/// Seals `plain` into an object. Compresses with zstd unless that does not help.
pub(crate) fn encode(kind: Kind, keys: Option<&Keys>, plain: &[u8]) -> Vec<u8> {
    debug_assert!(plain.len() <= kind.max_plain());
    let compressed = compress(plain).filter(|c| c.len() < plain.len());
    let mut flags = 0u8;
    let body_plain: &[u8] = match &compressed {
        Some(c) => {
            flags |= FLAG_ZSTD;
            c
        }
        None => plain,
    };
    if keys.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let body_len = body_plain.len() + if keys.is_some() { NONCE_LEN + 16 } else { 0 };
    let mut out = Vec::with_capacity(HEADER_LEN + body_len + SUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, kind as u8, flags, 0]);
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    match keys {
        Some(k) => {
            let mut nonce = [0u8; NONCE_LEN];
            rand::rngs::OsRng.fill_bytes(&mut nonce);
            let cipher = XChaCha20Poly1305::new((&k.enc).into());
            let header: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().unwrap_or([0; HEADER_LEN]);
            // Encryption with a valid key and nonce length cannot fail.
            let sealed = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: body_plain,
                        aad: &header,
                    },
                )
                .unwrap_or_default();
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
        None => out.extend_from_slice(body_plain),
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

struct Header {
    flags: u8,
    plain_len: usize,
}

fn parse_header(name: &str, kind: Kind, obj: &[u8]) -> Result<Header, SnapshotError> {
    let corrupt = |reason: &str| SnapshotError::Corrupt {
        key: name.to_string(),
        reason: reason.to_string(),
    };
    if obj.len() < MIN_OBJECT_LEN {
        return Err(corrupt("object is truncated"));
    }
    if &obj[..4] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if obj[4] != VERSION {
        return Err(corrupt(&format!("unsupported format version {}", obj[4])));
    }
    if obj[5] != kind as u8 {
        return Err(corrupt(&format!(
            "object kind {} where {:?} was expected",
            obj[5], kind
        )));
    }
    let flags = obj[6];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED) != 0 || obj[7] != 0 {
        return Err(corrupt("unknown flags"));
    }
    let plain_len = u32::from_le_bytes([obj[8], obj[9], obj[10], obj[11]]) as usize;
    let body_len = u32::from_le_bytes([obj[12], obj[13], obj[14], obj[15]]) as usize;
    if plain_len > kind.max_plain() {
        return Err(corrupt(&format!(
            "declared size {plain_len} exceeds limit {}",
            kind.max_plain()
        )));
    }
    if HEADER_LEN + body_len + SUM_LEN != obj.len() {
        return Err(corrupt("length does not match header"));
    }
    let (content, sum) = obj.split_at(obj.len() - SUM_LEN);
    if blake3::hash(content).as_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Header { flags, plain_len })
}

/// Opens an object: envelope checks, decryption, bounded decompression.
pub(crate) fn decode(
    name: &str,
    kind: Kind,
    keys: Option<&Keys>,
    obj: &[u8],
) -> Result<Vec<u8>, SnapshotError> {
    let corrupt = |reason: &str| SnapshotError::Corrupt {
        key: name.to_string(),
        reason: reason.to_string(),
    };
    let h = parse_header(name, kind, obj)?;
    let body = &obj[HEADER_LEN..obj.len() - SUM_LEN];
    let opened;
    let body: &[u8] = match (h.flags & FLAG_ENCRYPTED != 0, keys) {
        (true, Some(k)) => {
            if body.len() < NONCE_LEN + 16 {
                return Err(corrupt("encrypted body is truncated"));
            }
            let (nonce, sealed) = body.split_at(NONCE_LEN);
            let cipher = XChaCha20Poly1305::new((&k.enc).into());
            opened = cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &obj[..HEADER_LEN],
                    },
                )
                .map_err(|_| corrupt("authentication failed (wrong key or tampered object)"))?;
            &opened
        }
        (true, None) => return Err(corrupt("object is encrypted but no key was given")),
        (false, Some(_)) if kind != Kind::Config => {
            return Err(corrupt("object is not encrypted in an encrypted store"))
        }
        (false, _) => body,
    };
    let plain = if h.flags & FLAG_ZSTD != 0 {
        decompress(body, h.plain_len).map_err(|e| corrupt(&format!("zstd: {e}")))?
    } else {
        body.to_vec()
    };
    if plain.len() != h.plain_len {
        return Err(corrupt("decoded size does not match header"));
    }
    Ok(plain)
}

/// Store-wide settings kept at key `config`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Config {
    pub format: u32,
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub encrypted: bool,
    /// Hex of a key-derived constant: tells "wrong key" apart from corruption.
    pub key_check: Option<String>,
}
