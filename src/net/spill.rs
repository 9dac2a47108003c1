//! Response bytes spilled to disk. Past the memory budget for parked
//! output (`net::park`), a connection's unsent output goes to an unlinked
//! temporary file, and the IO thread sends it from there with sendfile(2)
//! (nginx's proxy buffering does the same), so no app thread waits on a
//! client that does not read and memory stays within the budget. Once a
//! connection has spilled, everything queued after goes to the same file,
//! so the bytes keep their order. A disk budget bounds what all
//! connections may spill; past it, the connection is closed.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::park::{ParkBudget, Parked};

/// One connection's spilled output: the file, how far it is written, how
/// far it is sent, and the disk it holds.
#[derive(Debug)]
pub(crate) struct Spill {
    file: File,
    written: u64,
    sent: u64,
    reserved: Parked,
    /// An append failed (disk full, past the budget): the connection ends.
    broken: bool,
}

impl Spill {
    /// A new spill holding `parts`, or None if the disk budget cannot
    /// take them. Errors are the temporary file's.
    pub(crate) fn new(budget: &Arc<ParkBudget>, parts: &[&[u8]]) -> io::Result<Option<Spill>> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut reserved = None;
        if !Parked::cover(&mut reserved, budget, len.max(1)) {
            return Ok(None);
        }
        let Some(reserved) = reserved else {
            return Ok(None);
        };
        let mut spill = Spill {
            file: super::body::temp_file()?,
            written: 0,
            sent: 0,
            reserved,
            broken: false,
        };
        for part in parts {
            spill.file.write_all_at(part, spill.written)?;
            spill.written += part.len() as u64;
        }
        Ok(Some(spill))
    }

    /// Appends `parts` after what is spilled; on failure the spill is
    /// marked broken and the next send fails.
    pub(crate) fn append(&mut self, parts: &[&[u8]]) {
        for part in parts {
            if self.broken || part.is_empty() {
                continue;
            }
            let ok = self.reserved.grow(part.len())
                && self.file.write_all_at(part, self.written).is_ok();
            if ok {
                self.written += part.len() as u64;
            } else {
                self.broken = true;
            }
        }
    }

    /// Bytes sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends what the socket takes now over TLS (no sendfile(2)).
    /// `Ok(true)` once all is sent.
    pub(crate) fn send_through(
        &mut self,
        transport: &mut super::transport::Transport,
        stream: &std::net::TcpStream,
    ) -> io::Result<bool> {
        if self.broken {
            return Err(io::Error::other("response spill failed"));
        }
        let left = self.written - self.sent;
        self.sent += transport.send_file_at(stream, &self.file, self.sent, left)?;
        Ok(self.sent == self.written)
    }

    /// Sends what the socket takes now. `Ok(true)` once all is sent.
    pub(crate) fn send(&mut self, to: &impl AsFd) -> io::Result<bool> {
        if self.broken {
            return Err(io::Error::other("response spill failed"));
        }
        while self.sent < self.written {
            let count = usize::try_from(self.written - self.sent)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let mut offset = i64::try_from(self.sent).map_err(io::Error::other)?;
            match nix::sys::sendfile::sendfile64(
                to.as_fd(),
                self.file.as_fd(),
                Some(&mut offset),
                count,
            ) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.sent += n as u64,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}
