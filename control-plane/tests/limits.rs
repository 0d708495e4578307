//! The listener's limits, over raw TCP: a client that trickles its headers, idles on a
//! kept-alive connection or stalls its body is cut off, and connections beyond the cap wait
//! instead of being served.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn plane() -> TestPlane {
    TestPlane::spawn_with(Store::Sqlite, |c| {
        c.header_timeout = Duration::from_millis(800);
        c.body_timeout = Duration::from_millis(800);
        c.max_connections = 2;
    })
    .await
}

/// Read until the server closes the connection (or `limit` passes); returns what came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let plane = plane().await;
    let addr = plane.server.addr();

    // Headers trickled a byte at a time never finish: the connection is closed.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
        trickle.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = read_until_closed(&mut trickle, Duration::from_secs(10)).await;
    assert!(got.is_some(), "a trickling client kept its connection");
    assert!(!got.unwrap().contains("200 OK"));

    // A kept-alive connection that goes quiet after a request is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle kept-alive connection stayed open");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    // A body that stalls halfway gets 408.
    let mut stall = TcpStream::connect(addr).await.unwrap();
    stall
        .write_all(
            b"POST /v1/invites/accept HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"code\":",
        )
        .await
        .unwrap();
    let got = read_until_closed(&mut stall, Duration::from_secs(10))
        .await
        .expect("a stalled body kept its connection");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let plane = plane().await;
    let addr = plane.server.addr();
    // Two silent connections take both slots.
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Not served while the slots are held...
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the connection cap");
    // ...and served once the silent ones time out and free theirs.
    let got = read_until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("never served");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}
