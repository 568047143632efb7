//! CPU placement of relay threads (Linux): the CPUs this process may run on, pinning a thread
//! to one, and the CPU a TCP connection's packets were last processed on (SO_INCOMING_CPU).

use std::os::fd::AsRawFd;

/// The CPUs this process may run on (its affinity mask), in order; empty when unknown.
#[allow(unsafe_code)]
pub fn allowed() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
#[allow(unsafe_code)]
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPU that last processed packets of `tcp` (for a local client, the one it runs on).
#[allow(unsafe_code)]
pub fn incoming_cpu(tcp: &tokio::net::TcpStream) -> Option<usize> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the duration of the call; cpu and len are valid for writes.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && cpu >= 0).then_some(cpu as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_only_on_its_cpu() {
        let cpus = allowed();
        assert!(!cpus.is_empty(), "the affinity mask is readable");
        let last = *cpus.last().unwrap();
        let (cpu, mask) = std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            #[allow(unsafe_code)]
            let cpu = unsafe { libc::sched_getcpu() };
            (cpu, allowed())
        })
        .join()
        .unwrap();
        assert_eq!(cpu, last as i32);
        assert_eq!(mask, vec![last]);
        // The caller's own mask is untouched.
        assert_eq!(allowed(), cpus);
    }

    #[tokio::test]
    async fn a_loopback_connection_reports_the_cpu_its_packets_arrived_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let cpu = incoming_cpu(&accepted).expect("SO_INCOMING_CPU is set once packets arrived");
        assert!(allowed().contains(&cpu), "{cpu} is one of {:?}", allowed());
        drop(client);
    }
}
