//! Socket helpers the adversarial tests share (the cloud's tests include this file too).

use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Reads until the peer closes; true if it did before `within`.
pub async fn closed_within(sock: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
