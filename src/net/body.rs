//! A request body as it arrives: in memory while small, spooled to an
//! anonymous temporary file once past a threshold, so a large upload costs
//! disk, not RAM.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

/// A complete request body.
#[derive(Debug)]
pub enum Body {
    Memory(Vec<u8>),
    /// An unlinked file, positioned at its start.
    File {
        file: File,
        len: u64,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(v) => v.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of an in-memory body (empty for a spooled one).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Memory(v) => v,
            Body::File { .. } => &[],
        }
    }
}

/// A body being received.
#[derive(Debug)]
pub struct BodyBuf {
    body: Body,
    threshold: usize,
}

impl BodyBuf {
    /// `expected` is the Content-Length, when there is one: a body known to
    /// be large goes to a file from its first byte.
    pub fn new(threshold: usize, expected: Option<u64>) -> io::Result<Self> {
        let body = match expected {
            Some(n) if n > threshold as u64 => Body::File {
                file: temp_file()?,
                len: 0,
            },
            Some(n) => Body::Memory(Vec::with_capacity(n as usize)),
            None => Body::Memory(Vec::new()),
        };
        Ok(BodyBuf { body, threshold })
    }

    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if let Body::Memory(v) = &mut self.body {
            if v.len() + data.len() <= self.threshold {
                v.extend_from_slice(data);
                return Ok(());
            }
            let mut file = temp_file()?;
            file.write_all(v)?;
            self.body = Body::File {
                file,
                len: v.len() as u64,
            };
        }
        if let Body::File { file, len } = &mut self.body {
            file.write_all(data)?;
            *len += data.len() as u64;
        }
        Ok(())
    }

    pub fn finish(self) -> io::Result<Body> {
        let mut body = self.body;
        if let Body::File { file, .. } = &mut body {
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(body)
    }
}

/// An anonymous file in the temp dir: O_TMPFILE where the filesystem has it,
/// else a named file (mode 0600) unlinked at once, so nothing is left behind
/// whatever becomes of the process. Request bodies and spilled responses
/// (`net::spill`) are kept in these.
pub(crate) fn temp_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    let anonymous = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_TMPFILE | nix::libc::O_CLOEXEC)
        .open(&dir);
    if let Ok(file) = anonymous {
        return Ok(file);
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("butterflies-tmp-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn small_bodies_stay_in_memory() {
        let mut b = BodyBuf::new(10, None).unwrap();
        b.push(b"hello").unwrap();
        assert!(matches!(b.finish().unwrap(), Body::Memory(v) if v == b"hello"));
    }

    #[test]
    fn large_bodies_spool_to_a_file_byte_exact() {
        let mut b = BodyBuf::new(10, None).unwrap();
        b.push(b"0123456789").unwrap();
        b.push(b"abc").unwrap();
        let Body::File { mut file, len } = b.finish().unwrap() else {
            panic!("not spooled")
        };
        let mut got = Vec::new();
        file.read_to_end(&mut got).unwrap();
        assert_eq!((got.as_slice(), len), (&b"0123456789abc"[..], 13));
        let known = BodyBuf::new(10, Some(11)).unwrap();
        assert!(matches!(known.finish().unwrap(), Body::File { .. }));
    }
}
