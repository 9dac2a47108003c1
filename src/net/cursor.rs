//! Borrowed response bytes being written: a list of slices and how far
//! along they are. A large Array body is written straight from (frozen
//! snapshots of) the app's strings, waiting for a slow client as it goes,
//! instead of being copied into the connection's buffer first; only what
//! is left when the writer stops waiting is copied.

use std::io::{self, IoSlice};
use std::time::Instant;

use super::conn::Conn;

/// `writev(2)` takes at most IOV_MAX (1024) slices; we give it this many.
const SLICES_PER_WRITE: usize = 512;

#[derive(Debug)]
pub struct Cursor<'a> {
    parts: &'a [&'a [u8]],
    /// The part being written, and how much of it is written.
    index: usize,
    offset: usize,
    left: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(parts: &'a [&'a [u8]]) -> Self {
        Cursor {
            parts,
            index: 0,
            offset: 0,
            left: parts.iter().map(|p| p.len()).sum(),
        }
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.left
    }

    pub fn is_done(&self) -> bool {
        self.left == 0
    }

    fn rest(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let first = self.parts.get(self.index).map(|p| &p[self.offset..]);
        first
            .into_iter()
            .chain(self.parts.iter().skip(self.index + 1).copied())
            .filter(|p| !p.is_empty())
    }

    fn advance(&mut self, mut n: usize) {
        self.left -= n;
        while n > 0 {
            let here = self.parts[self.index].len() - self.offset;
            if n < here {
                self.offset += n;
                return;
            }
            n -= here;
            self.index += 1;
            self.offset = 0;
        }
        while self.index < self.parts.len() && self.offset == self.parts[self.index].len() {
            self.index += 1;
            self.offset = 0;
        }
    }

    /// Writes what the socket takes now, without blocking. The connection
    /// must have nothing else queued before these bytes.
    pub fn write_to(&mut self, conn: &mut Conn) -> io::Result<()> {
        debug_assert!(!conn.has_output());
        while !self.is_done() {
            let slices: Vec<IoSlice<'_>> = self
                .rest()
                .take(SLICES_PER_WRITE)
                .map(IoSlice::new)
                .collect();
            match conn.send_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    conn.last_write = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands what is left to the connection, parked in memory or spilled
    /// to disk within the budgets (`Conn::park_or_spill`); false, and
    /// nothing moved, if neither can take it.
    pub fn hand_over(
        &mut self,
        conn: &mut Conn,
        memory: &std::sync::Arc<super::park::ParkBudget>,
        disk: &std::sync::Arc<super::park::ParkBudget>,
    ) -> bool {
        let rest: Vec<&[u8]> = self.rest().collect();
        if !conn.park_or_spill(memory, disk, &rest) {
            return false;
        }
        self.advance(self.left);
        true
    }

    /// Copies what is left after anything the connection has queued; the
    /// IO thread writes it.
    pub fn queue_rest(&mut self, conn: &mut Conn) {
        let rest: Vec<&[u8]> = self.rest().collect();
        conn.append(&rest);
        self.advance(self.left);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::net::conn::tests::pair;
    use std::io::Read;

    #[test]
    fn advances_over_parts_of_any_size() {
        let parts: [&[u8]; 4] = [b"ab", b"", b"cde", b"f"];
        let mut cursor = Cursor::new(&parts);
        cursor.advance(3);
        assert_eq!(cursor.rest().collect::<Vec<_>>(), [&b"de"[..], b"f"]);
        cursor.advance(2);
        assert_eq!(cursor.rest().collect::<Vec<_>>(), [&b"f"[..]]);
        assert_eq!(cursor.remaining(), 1);
        cursor.advance(1);
        assert!(cursor.is_done());
        assert_eq!(cursor.rest().count(), 0);
    }

    #[test]
    fn writes_what_the_socket_takes_and_queues_the_rest_in_order() {
        let (mut conn, mut client) = pair();
        let big = vec![7u8; 16 << 20];
        let parts: [&[u8]; 3] = [b"head", &big, b"tail"];
        let mut cursor = Cursor::new(&parts);
        cursor.write_to(&mut conn).unwrap();
        assert!(!cursor.is_done(), "16 MiB do not fit in socket buffers");
        assert!(cursor.remaining() < 8 + (16 << 20), "some was written");
        cursor.queue_rest(&mut conn);
        assert!(cursor.is_done());
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        while !conn.flush().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(conn);
        let all = reader.join().unwrap();
        assert_eq!(all.len(), 8 + (16 << 20));
        assert!(all.starts_with(b"head") && all.ends_with(b"tail"));
        assert!(all[4..all.len() - 4].iter().all(|&b| b == 7));
    }
}
