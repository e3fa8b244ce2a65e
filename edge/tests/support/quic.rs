//! A quinn QUIC device for the integration tests, trusting the edge's certificate by its
//! SHA-256 fingerprint, and a wss client (tungstenite over rustls) pinned the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

pub fn client_tls(sha256: &str, alpn: &[u8]) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(cue_edge::tls::PinnedFingerprint::new(sha256))
    .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    c
}

/// A quinn client endpoint on loopback trusting `sha256`.
pub fn endpoint(sha256: &str) -> quinn::Endpoint {
    endpoint_keep_alive(sha256, None)
}

/// As [`endpoint`], the device sending a keep-alive every `keep_alive`.
pub fn endpoint_keep_alive(sha256: &str, keep_alive: Option<Duration>) -> quinn::Endpoint {
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let tls = client_tls(sha256, b"cue/1");
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut c = quinn::ClientConfig::new(Arc::new(q));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive);
    c.transport_config(Arc::new(t));
    e.set_default_client_config(c);
    e
}

/// A device's stream after the hello.
pub struct Device {
    pub conn: quinn::Connection,
    pub recv: quinn::RecvStream,
    pub send: quinn::SendStream,
    pub buf: Vec<u8>,
}

/// Connects, writes `hello` and returns the answer line with the stream.
pub async fn hello(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    hello: &[u8],
) -> Result<(serde_json::Value, Device), String> {
    let conn = ep
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(hello).await.map_err(|e| e.to_string())?;
    let mut d = Device {
        conn,
        recv,
        send,
        buf: Vec::new(),
    };
    let line = d.line().await?;
    let v = serde_json::from_slice(&line).map_err(|e| e.to_string())?;
    Ok((v, d))
}

impl Device {
    /// The next line on the stream.
    pub async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(n) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..n].to_vec();
                self.buf.drain(..=n);
                return Ok(line);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(10), self.recv.read(&mut chunk)).await {
                Err(_) => return Err("timed out".into()),
                Ok(Ok(Some(n))) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Ok(None)) => return Err("stream finished".into()),
                Ok(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    /// The next cue (JSON line) as (event, key, seq).
    pub async fn cue(&mut self) -> (String, String, u64) {
        let l = self.line().await.expect("cue line");
        let c = cue_common::cue::Cue::from_json(&l).expect("cue JSON");
        (c.event().to_string(), c.key().to_string(), c.seq())
    }
}

/// The SHA-256 fingerprint the edge logged (waits for the log line).
pub fn logged_fingerprint(log: &std::path::Path) -> String {
    let mut out = String::new();
    super::wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.split("sha256=").nth(1) {
            Some(rest) => {
                out = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                out.len() == 64
            }
            None => false,
        }
    });
    out
}

/// A wss client pinned to `sha256` (tungstenite over rustls).
pub fn wss_subscribe(
    addr: SocketAddr,
    query: &str,
    sha256: &str,
) -> Result<
    tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
    String,
> {
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tls = rustls::ClientConnection::new(
        Arc::new(client_tls(sha256, b"http/1.1")),
        ServerName::try_from("localhost").unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let stream = rustls::StreamOwned::new(tls, tcp);
    let url = format!("wss://localhost:{}/v1/subscribe?{query}", addr.port());
    tungstenite::client(url, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}
