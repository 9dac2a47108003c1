//! Hash walks cheaper than the general API's: values written into
//! entries a Hash already has, without hashing keys ([`fill`]), and a
//! response's headers read without `rb_hash_foreach`'s `rb_ensure`
//! ([`each_pair`]).
//!
//! Every env starts as a copy of its app thread's template, which holds
//! the keys every request sets (`REQUEST_METHOD`, `PATH_INFO`, ...) first,
//! then the server's constant ones. A copy keeps each entry's stored hash
//! and its order, so the values can be written in place by walking the
//! entries (`rb_st_foreach_with_replace`, what `Hash#transform_values!`
//! does) instead of one `rb_hash_aset` per key, which hashes the key
//! string, finds its bin and may grow the table: 12 such inserts were a
//! quarter of the instructions Butterflies spends per hello request
//! (callgrind, Ruby 3.1).

use std::os::raw::{c_char, c_int};
use std::sync::OnceLock;

use magnus::rb_sys::AsRawValue;
use magnus::{RHash, RString, Value};
use rb_sys::{st_data_t, st_retval, st_table, VALUE};

type TableFn = unsafe extern "C" fn(VALUE, *const c_char, c_int) -> *mut st_table;

/// `rb_hash_tbl_raw`, Ruby's own way to a Hash's table (exported, not in
/// the public headers; 3.1 to 3.3 have it). Without it, the public
/// `rb_hash_tbl`, which also marks the hash as one the GC cannot follow
/// by write barriers (harmless for an env: it dies young).
fn table_fn() -> TableFn {
    static FOUND: OnceLock<TableFn> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT looks the name up in what is
        // loaded (libruby, or the ruby binary); a symbol of that name is
        // Ruby's, whose signature is `TableFn` in every version that has it.
        let raw = unsafe { nix::libc::dlsym(nix::libc::RTLD_DEFAULT, c"rb_hash_tbl_raw".as_ptr()) };
        if raw.is_null() {
            rb_sys::rb_hash_tbl
        } else {
            // SAFETY: see above.
            unsafe { std::mem::transmute::<*mut std::ffi::c_void, TableFn>(raw) }
        }
    })
}

type ForeachFn = unsafe extern "C" fn(VALUE, rb_sys::st_foreach_callback_func, st_data_t) -> c_int;

/// `rb_hash_stlike_foreach`: Ruby's walk of a Hash's entries without the
/// iteration level `rb_hash_foreach` keeps (and the `rb_ensure` that
/// resets it), which is there for callbacks that run Ruby code; exported
/// by 3.1 to 3.3, not in the headers. `None`: use `rb_hash_foreach`.
fn foreach_fn() -> Option<ForeachFn> {
    static FOUND: OnceLock<Option<ForeachFn>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: as in `table_fn`; the signature is `ForeachFn` wherever
        // the symbol exists.
        let raw = unsafe {
            nix::libc::dlsym(nix::libc::RTLD_DEFAULT, c"rb_hash_stlike_foreach".as_ptr())
        };
        // SAFETY: see above.
        (!raw.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut std::ffi::c_void, ForeachFn>(raw) })
    })
}

/// Looks the functions up once, so that the app threads never race
/// `OnceLock`'s first initialisation under a GVL switch.
pub fn warm() {
    table_fn();
    foreach_fn();
}

unsafe extern "C" fn each_entry(key: st_data_t, value: st_data_t, arg: st_data_t) -> c_int {
    // SAFETY: `arg` is the closure `each_pair` lends for the walk.
    let func = unsafe { &mut *(arg as *mut &mut dyn FnMut(Value, Value) -> bool) };
    // SAFETY: keys and values of a live Hash are VALUEs.
    let (key, value) = unsafe {
        (
            <Value as magnus::rb_sys::FromRawValue>::from_raw(key as VALUE),
            <Value as magnus::rb_sys::FromRawValue>::from_raw(value as VALUE),
        )
    };
    // A panic must not unwind into Ruby's C frames: it ends the walk.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| func(key, value))) {
        Ok(true) => st_retval::ST_CONTINUE as c_int,
        _ => st_retval::ST_STOP as c_int,
    }
}

/// Calls `func` with each key and value of `hash` until it returns false.
/// `func` must not run Ruby code (nothing that could change the Hash, or
/// raise): it only reads, and keeps any error for the caller.
pub fn each_pair(hash: RHash, mut func: impl FnMut(Value, Value) -> bool) {
    let mut func: &mut dyn FnMut(Value, Value) -> bool = &mut func;
    let arg = &mut func as *mut &mut dyn FnMut(Value, Value) -> bool as st_data_t;
    // SAFETY: `hash` is a live Hash and the GVL is held; `func` runs no
    // Ruby code, so the Hash cannot change during the walk, and nothing in
    // it raises (it only stops the walk); `func` outlives the walk.
    unsafe {
        match foreach_fn() {
            Some(foreach) => {
                foreach(hash.as_raw(), Some(each_entry), arg);
            }
            None => rb_sys::rb_hash_foreach(hash.as_raw(), Some(each_entry_foreach), arg),
        }
    }
}

/// `rb_hash_foreach`'s callback type takes VALUEs.
unsafe extern "C" fn each_entry_foreach(key: VALUE, value: VALUE, arg: VALUE) -> c_int {
    // SAFETY: the same walk as `each_entry`'s.
    unsafe { each_entry(key as st_data_t, value as st_data_t, arg as st_data_t) }
}

/// The walk's state.
struct Walk<'a> {
    hash: VALUE,
    keys: &'a [RString],
    values: &'a [Value],
    /// Entries seen so far.
    at: usize,
    /// A key was not where the template put it.
    mismatch: bool,
}

unsafe extern "C" fn check(
    key: st_data_t,
    _value: st_data_t,
    arg: st_data_t,
    _error: c_int,
) -> c_int {
    // SAFETY: `arg` is the `Walk` that `fill` lends for the walk.
    let walk = unsafe { &mut *(arg as *mut Walk) };
    match walk.keys.get(walk.at) {
        None => st_retval::ST_STOP as c_int,
        Some(expected) if expected.as_raw() as st_data_t == key => st_retval::ST_REPLACE as c_int,
        Some(_) => {
            walk.mismatch = true;
            st_retval::ST_STOP as c_int
        }
    }
}

unsafe extern "C" fn replace(
    _key: *mut st_data_t,
    value: *mut st_data_t,
    arg: st_data_t,
    _existing: c_int,
) -> c_int {
    // SAFETY: `arg` is the `Walk` that `fill` lends; `value` points at the
    // entry's value, which Ruby stores back after this returns.
    let walk = unsafe { &mut *(arg as *mut Walk) };
    let new = walk.values[walk.at];
    // SAFETY: `value` is Ruby's pointer to the entry's value, valid for
    // this call.
    unsafe { *value = new.as_raw() as st_data_t };
    if !rb_sys::SPECIAL_CONST_P(new.as_raw()) {
        // SAFETY: both live objects; what `RB_OBJ_WRITE` does after a store.
        unsafe { rb_sys::rb_gc_writebarrier(walk.hash, new.as_raw()) };
    }
    walk.at += 1;
    st_retval::ST_CONTINUE as c_int
}

/// Sets `keys[i]` to `values[i]` in `hash`, whose first entries are `keys`
/// in that order (a copy of a template made so). Returns false, having
/// changed at most the entries before it, if an entry was not where it
/// should be: the caller then sets them the ordinary way.
pub fn fill(hash: RHash, keys: &[RString], values: &[Value]) -> bool {
    debug_assert_eq!(keys.len(), values.len());
    let raw = hash.as_raw();
    let mut walk = Walk {
        hash: raw,
        keys,
        values,
        at: 0,
        mismatch: false,
    };
    // SAFETY: `hash` is a live Hash on the caller's stack, the GVL is held,
    // and nothing else has seen it yet (a fresh copy): its table cannot be
    // changed or freed during the walk, and neither callback runs Ruby code
    // or allocates. `walk` outlives the walk.
    unsafe {
        let table = table_fn()(raw, c"hash_walk".as_ptr(), 0);
        rb_sys::rb_st_foreach_with_replace(
            table,
            Some(check),
            Some(replace),
            &mut walk as *mut Walk as st_data_t,
        );
    }
    !walk.mismatch && walk.at == keys.len()
}
