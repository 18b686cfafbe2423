//! Tests of the parent module.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use super::agent_runtime;
use crate::health::Health;

/// The agent's runtime keeps its endpoints answering while the collection loop, on the
/// thread that drives the runtime, is busy: `/healthz` answers within 200 ms while that
/// thread is blocked for 1.5 s (on a single shared thread it would wait for all of it).
#[test]
fn endpoints_answer_while_the_collection_loop_is_busy() {
    let runtime = agent_runtime().unwrap();
    let elapsed = runtime.block_on(async {
        let (_health, addr) =
            Health::start("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10)).unwrap();
        let asker = std::thread::spawn(move || {
            // Once the loop below has started blocking.
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
            started.elapsed()
        });
        // A collection: synchronous work on the runtime's driving thread.
        std::thread::sleep(Duration::from_millis(1500));
        asker.join().unwrap()
    });
    assert!(
        elapsed < Duration::from_millis(200),
        "/healthz took {elapsed:?} while the loop was busy"
    );
}
