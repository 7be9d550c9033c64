//! `getsockopt(TCP_INFO)` on Linux: the one place in syncnode that needs
//! `unsafe` (a C call filling a C struct).

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::Duration;

/// The fields of Linux `struct tcp_info` (include/uapi/linux/tcp.h) up to
/// `tcpi_delivery_rate`, in kernel order. Older kernels fill a prefix; the
/// returned length says which fields are valid.
#[repr(C)]
#[derive(Default)]
struct RawTcpInfo {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    wscale: u8,
    flags: u8,
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
}

/// What the adaptive sampler uses from `TCP_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// Smoothed RTT.
    pub srtt: Duration,
    /// Minimum RTT the kernel has seen on this connection (`None` on kernels before 4.6).
    pub min_rtt: Option<Duration>,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Bytes the peer acknowledged over the connection's life (kernels 4.1+).
    pub bytes_acked: u64,
}

/// Reads `TCP_INFO` of a TCP socket.
pub fn read(fd: RawFd) -> std::io::Result<TcpInfo> {
    let mut raw = RawTcpInfo::default();
    let mut len = std::mem::size_of::<RawTcpInfo>() as libc::socklen_t;
    // SAFETY: `raw` is a properly aligned, writable `repr(C)` struct of `len`
    // bytes that outlives the call; the kernel writes at most `len` bytes and
    // stores the number written in `len`. A bad or non-TCP fd makes the call
    // fail with an errno; it cannot write elsewhere.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut raw).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let has = |end: usize| len as usize >= end;
    let min_rtt_end = std::mem::offset_of!(RawTcpInfo, min_rtt) + 4;
    let acked_end = std::mem::offset_of!(RawTcpInfo, bytes_acked) + 8;
    Ok(TcpInfo {
        srtt: Duration::from_micros(u64::from(raw.rtt)),
        min_rtt: (has(min_rtt_end) && raw.min_rtt != u32::MAX && raw.min_rtt != 0)
            .then(|| Duration::from_micros(u64::from(raw.min_rtt))),
        total_retrans: raw.total_retrans,
        bytes_acked: if has(acked_end) { raw.bytes_acked } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_a_live_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[1u8; 100_000]).unwrap();
        let mut buf = vec![0u8; 100_000];
        s.read_exact(&mut buf).unwrap();
        // Let the ACKs come back.
        std::thread::sleep(Duration::from_millis(50));
        let info = read(c.as_raw_fd()).unwrap();
        assert!(info.bytes_acked >= 100_000, "{info:?}");
        assert!(
            info.srtt > Duration::ZERO && info.srtt < Duration::from_secs(1),
            "{info:?}"
        );
        assert!(
            info.min_rtt.is_some_and(|m| m <= info.srtt + info.srtt),
            "{info:?}"
        );
    }

    #[test]
    fn a_non_socket_is_an_error() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(read(f.as_raw_fd()).is_err());
    }
}
