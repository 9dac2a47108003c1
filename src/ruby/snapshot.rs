//! Frozen snapshots of an Array body's strings, whose bytes stay valid
//! while the GVL is released (a large response written straight from Ruby
//! memory with `writev(2)`, which may wait for a slow client in between).
//!
//! A slice of a Ruby string is valid only while no Ruby code runs: once
//! the GVL is released, another thread may `replace`, `clear` or free the
//! string, or take it out of the Array. So each string is first turned
//! into a frozen shared snapshot with `rb_str_new_frozen`, as `IO#write`
//! does before it blocks. The snapshot shares the string's buffer; if the
//! app changes its string afterwards, Ruby gives *the app's string* a new
//! buffer (copy on write) and the snapshot's bytes stay as they were. The
//! app never gets an error for changing its own strings (a `rb_str_locktmp`
//! lock would raise in it).
//!
//! The snapshots are held by a hidden Ruby Array that lives in this struct,
//! on the caller's stack, where the GC's conservative stack scan finds it
//! (and pins it) for the whole send; `Drop` keeps it observably alive until
//! then. A `Vec<RString>` on the heap would be invisible to the GC.

use magnus::rb_sys::{AsRawValue, FromRawValue};
use magnus::{RArray, RString, Ruby, Value};

/// Strings shorter than this are copied instead of borrowed. Any string
/// this long has its bytes in a malloc'd buffer, never inside the object
/// (embedded strings are at most 640 bytes with Ruby 3.3's variable-width
/// slots, 23 bytes before), so GC compaction, which moves objects but not
/// their malloc'd buffers, cannot move the bytes a slice points at.
const BORROW_FROM_BYTES: usize = 16 * 1024;

/// One body piece: borrowed from a snapshot, or a range of the copies.
enum Piece {
    Borrowed(*const u8, usize),
    Copied(std::ops::Range<usize>),
}

/// The bytes of an Array body, readable without the GVL for as long as
/// this value lives.
pub struct Snapshot {
    /// Hidden Array of the frozen snapshots: what keeps them alive.
    keep: RArray,
    copies: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Snapshot {
    /// Snapshots every string of `chunks` (each already checked to be a
    /// String, with no Ruby code run since). Runs with the GVL held.
    pub fn take(ruby: &Ruby, chunks: RArray) -> Snapshot {
        let keep = ruby.ary_new_capa(chunks.len());
        // SAFETY: `keep` is a new Array we own; hiding it (clearing its
        // class) only takes it out of ObjectSpace, so no Ruby code can
        // reach and change it. Called with the GVL held.
        unsafe { rb_sys::rb_obj_hide(keep.as_raw()) };
        let mut copies = Vec::new();
        let mut pieces = Vec::with_capacity(chunks.len());
        for chunk in chunks.into_iter().filter_map(RString::from_value) {
            if chunk.len() < BORROW_FROM_BYTES {
                // SAFETY: copied at once; no Ruby code runs while the
                // slice is held.
                let bytes = unsafe { chunk.as_slice() };
                let start = copies.len();
                copies.extend_from_slice(bytes);
                pieces.push(Piece::Copied(start..copies.len()));
                continue;
            }
            // SAFETY: GVL held; `chunk` is a live String (on our stack and
            // in `chunks`). rb_str_new_frozen runs no Ruby code.
            let frozen = unsafe { rb_sys::rb_str_new_frozen(chunk.as_raw()) };
            // SAFETY: a VALUE Ruby just returned, with the GVL held.
            let frozen = unsafe { Value::from_raw(frozen) };
            let Some(frozen) = RString::from_value(frozen) else {
                continue; // cannot happen: it returns a String
            };
            // Pushing to a hidden Array runs no Ruby code either.
            let _ = keep.push(frozen);
            // SAFETY: taken with the GVL held. The pointer stays valid
            // after the GVL is released: the snapshot is frozen (nothing
            // may change its bytes; the app's own string is copied on
            // write instead), reachable from `keep` (so not freed), and
            // at least BORROW_FROM_BYTES long (so its bytes are in a
            // malloc'd buffer that compaction does not move).
            let bytes = unsafe { frozen.as_slice() };
            pieces.push(Piece::Borrowed(bytes.as_ptr(), bytes.len()));
        }
        Snapshot {
            keep,
            copies,
            pieces,
        }
    }

    /// The pieces' bytes, in body order.
    pub fn parts(&self) -> Vec<&[u8]> {
        self.pieces
            .iter()
            .map(|piece| match piece {
                // SAFETY: see `take`: the buffer is frozen and kept alive
                // by `self.keep` for as long as `self` (and so this borrow)
                // lives.
                Piece::Borrowed(ptr, len) => unsafe { std::slice::from_raw_parts(*ptr, *len) },
                Piece::Copied(range) => &self.copies[range.clone()],
            })
            .collect()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // The Array must stay on the stack (seen by the GC) until every
        // borrowed slice is gone; an opaque use at the end guarantees the
        // compiler does not drop it from the stack earlier.
        std::hint::black_box(self.keep.as_raw());
    }
}
