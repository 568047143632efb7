//! The floor for a relay on tokio, for `make bench-relay` (`BENCH_FLOOR_TOKIO=1`): one
//! current-thread runtime (as one pgml-proxy relay thread has) and each session's bytes
//! copied between its TCP client and a Unix-socket upstream by `copy_bidirectional`, with no
//! framing, no protocol state and no interception. Set beside `floor_relay` (the same pipe on
//! a bare epoll loop), it shows what the runtime itself costs per transaction: the part of the
//! proxy's gap to that floor that no relay written on tokio can win back. A benchmark tool,
//! not a proxy: no TLS, no limits, no cancel routing.
//!
//! Usage: floor_tokio LISTEN_ADDR UPSTREAM_SOCKET_PATH

use tokio::net::{TcpListener, UnixStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_tokio LISTEN_ADDR UPSTREAM_SOCKET_PATH");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                match UnixStream::connect(&upstream).await {
                    Ok(mut server) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    Err(e) => eprintln!("floor_tokio: {upstream}: {e}"),
                }
            });
        }
    })
}
