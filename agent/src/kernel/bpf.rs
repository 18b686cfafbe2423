//! The bpf(2) syscall for the commands aya does not wrap (module BTF objects, programs
//! on module tracepoints, the upgrade's map reads).

use std::io;

/// bpf(2) with `cmd` and `attr`; the kernel's non-negative answer (an fd for the
/// commands that make one). Every pointer inside `attr` must point at memory that
/// outlives the call and is as large as the command reads or writes there.
pub fn syscall<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: a live attr of the stated size; the kernel writes at most that many bytes
    // back, and the pointers inside it are valid as the caller promises.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
