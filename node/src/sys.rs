//! Linux system calls that std does not wrap: with `ratelimit`'s `TCP_INFO`
//! probe, the only `unsafe` in syncnode (plain C calls on a file descriptor
//! the caller owns, taking no pointers but to locals).
//!
//! On other systems each function is a no-op that reports success: they are
//! performance hints, never needed for correctness.

#![allow(unsafe_code)]

use std::fs::File;

/// Starts writing back the dirty pages of `len` bytes at `off` of `file`
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), without waiting for them.
///
/// The stager calls it after each chunk it writes when `fsync` is on, so the
/// disk absorbs a version while it downloads and the `fsync` before
/// `current` switches finds little left to write. Without it, every node's
/// whole version is still dirty at that moment and, on ext4, the journal
/// commit that one `fsync` forces waits for all of it.
pub fn start_writeback(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len))
        else {
            return Ok(());
        };
        // SAFETY: a plain system call on an fd `file` keeps open for the
        // duration of the call; no memory is passed. A bad range or fd
        // fails with an errno.
        let rc = unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, off, len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writeback_of_a_written_range_succeeds_and_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
        start_writeback(&f, 0, 100_000).unwrap();
        start_writeback(&f, 4096, 8192).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), vec![7u8; 100_000]);
    }
}
