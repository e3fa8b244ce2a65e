//! The QUIC TLS session of a device connection, over rustls, that lets go of rustls once the
//! handshake is over.
//!
//! quinn-proto's own rustls glue keeps the whole `rustls::quic::ServerConnection` for as long as
//! the connection lives: its handshake state, its (unused under QUIC) record-layer encrypter and
//! decrypter, its buffers, ~3.8 KB per idle device (heaptrack, docs/edge.md). After the handshake
//! a QUIC server needs only the 1-RTT secrets, to derive the keys of a key update. This session
//! is the same rustls handshake; when rustls has nothing left to write and is no longer
//! handshaking, it keeps the [`Secrets`] and the negotiated ALPN/SNI and drops the rest.
//!
//! What a device can no longer do afterwards is send post-handshake TLS messages (QUIC has none
//! a server must read: no KeyUpdate, no client tickets, no post-handshake authentication);
//! such CRYPTO data is refused as a protocol violation. Keying-material export is not used by
//! Cue and fails after the handshake.

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use quinn_proto::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn_proto::crypto::{
    self, ExportKeyingMaterialError, KeyPair, Keys, PacketKey, UnsupportedVersion,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::quic::{Connection, KeyChange, Secrets, ServerConnection, Suite, Version};

/// Server crypto for quinn-proto whose sessions free rustls after the handshake.
pub struct LeanServerConfig {
    tls: Arc<rustls::ServerConfig>,
    /// quinn-proto's own config, for what is not per session (initial keys, retry tags).
    quinn: QuicServerConfig,
    initial: Suite,
    /// Sessions still holding their rustls connection (handshakes in progress).
    holding: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LeanServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanServerConfig").finish_non_exhaustive()
    }
}

/// The rustls settings cannot carry QUIC (no TLS 1.3 AES-128-GCM suite for Initial packets).
#[derive(Debug, thiserror::Error)]
#[error("TLS settings unusable for QUIC: {0}")]
pub struct UnusableForQuic(String);

impl LeanServerConfig {
    /// Wraps rustls server settings (TLS 1.3, ALPN set by the caller).
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Result<Self, UnusableForQuic> {
        let initial = tls
            .crypto_provider()
            .cipher_suites
            .iter()
            .find_map(|cs| match (cs.suite(), cs.tls13()) {
                (rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, Some(s)) => s.quic_suite(),
                _ => None,
            })
            .ok_or_else(|| UnusableForQuic("no TLS13_AES_128_GCM_SHA256 suite".into()))?;
        let quinn =
            QuicServerConfig::try_from(tls.clone()).map_err(|e| UnusableForQuic(e.to_string()))?;
        Ok(Self {
            tls,
            quinn,
            initial,
            holding: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Sessions that still hold rustls state: handshakes in progress (and connections that
    /// ended mid-handshake but are not yet dropped). An idle established connection holds none.
    pub fn sessions_holding_tls(&self) -> usize {
        self.holding.load(Ordering::Relaxed)
    }
}

impl crypto::ServerConfig for LeanServerConfig {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.quinn.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.quinn.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        // quinn-proto calls this only for a version `initial_keys` accepted.
        let version = rustls_version(version).expect("version accepted by initial_keys");
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        let tls = ServerConnection::new(self.tls.clone(), version, encoded)
            .expect("TLS 1.3 QUIC server settings checked in LeanServerConfig::new");
        self.holding.fetch_add(1, Ordering::Relaxed);
        Box::new(LeanSession {
            holding: self.holding.clone(),
            version,
            suite: self.initial,
            tls: Some(Box::new(Connection::Server(tls))),
            next: None,
            got_handshake_data: false,
            alpn: None,
            server_name: None,
        })
    }
}

fn rustls_version(v: u32) -> Result<Version, UnsupportedVersion> {
    match v {
        0xff00_001d..=0xff00_0020 => Ok(Version::V1Draft),
        0x0000_0001 | 0xff00_0021..=0xff00_0022 => Ok(Version::V1),
        _ => Err(UnsupportedVersion),
    }
}

/// One connection's TLS: rustls while handshaking, then only the key-update secrets.
struct LeanSession {
    version: Version,
    suite: Suite,
    /// `None` once the handshake is over and everything it wrote was taken.
    tls: Option<Box<Connection>>,
    /// Secrets for the next 1-RTT key update.
    next: Option<Secrets>,
    got_handshake_data: bool,
    alpn: Option<Vec<u8>>,
    server_name: Option<Box<str>>,
    holding: Arc<AtomicUsize>,
}

impl LeanSession {
    fn release(&mut self) {
        if self.tls.take().is_some() {
            self.holding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LeanSession {
    fn drop(&mut self) {
        self.release();
    }
}

fn to_quinn(keys: rustls::quic::Keys) -> Keys {
    Keys {
        header: KeyPair {
            local: Box::new(keys.local.header),
            remote: Box::new(keys.remote.header),
        },
        packet: KeyPair {
            local: Box::new(keys.local.packet),
            remote: Box::new(keys.remote.packet),
        },
    }
}

impl crypto::Session for LeanSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        to_quinn(self.suite.keys(dst_cid, side.into(), self.version))
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        if !self.got_handshake_data {
            return None;
        }
        Some(Box::new(HandshakeData {
            protocol: self.alpn.clone(),
            server_name: self.server_name.as_deref().map(str::to_owned),
        }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        // Devices do not present certificates (no client authentication).
        None
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn PacketKey>)> {
        // Server side, and 0-RTT is off (max_early_data_size = 0).
        None
    }

    fn early_data_accepted(&self) -> Option<bool> {
        None
    }

    fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let Some(tls) = self.tls.as_mut() else {
            return Err(TransportError {
                code: TransportErrorCode::PROTOCOL_VIOLATION,
                frame: None,
                reason: "TLS message after the handshake".into(),
            });
        };
        tls.read_hs(buf).map_err(|e| match tls.alert() {
            Some(alert) => TransportError {
                code: TransportErrorCode::crypto(alert.into()),
                frame: None,
                reason: e.to_string(),
            },
            None => TransportError {
                code: TransportErrorCode::PROTOCOL_VIOLATION,
                frame: None,
                reason: format!("TLS error: {e}"),
            },
        })?;
        if !self.got_handshake_data {
            // As quinn-proto's glue: the ClientHello has been read once the server name or
            // ALPN is known (or the handshake is over).
            let alpn = tls.alpn_protocol().map(<[u8]>::to_vec);
            let sni = match &**tls {
                Connection::Server(s) => s.server_name().map(Box::<str>::from),
                Connection::Client(_) => None,
            };
            if alpn.is_some() || sni.is_some() || !tls.is_handshaking() {
                self.alpn = alpn;
                self.server_name = sni;
                self.got_handshake_data = true;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        let Some(buf) = self
            .tls
            .as_ref()
            .and_then(|t| t.quic_transport_parameters())
        else {
            return Ok(None);
        };
        TransportParameters::read(Side::Server, &mut io::Cursor::new(buf))
            .map(Some)
            .map_err(Into::into)
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let tls = self.tls.as_mut()?;
        match tls.write_hs(buf) {
            Some(KeyChange::Handshake { keys }) => Some(to_quinn(keys)),
            Some(KeyChange::OneRtt { keys, next }) => {
                self.next = Some(next);
                Some(to_quinn(keys))
            }
            None => {
                if buf.is_empty() && !tls.is_handshaking() && self.next.is_some() {
                    // Handshake over and nothing more to send: keep only the secrets.
                    self.release();
                }
                None
            }
        }
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        let keys = self.next.as_mut()?.next_packet_keys();
        Some(KeyPair {
            local: Box::new(keys.local),
            remote: Box::new(keys.remote),
        })
    }

    fn is_valid_retry(
        &self,
        _orig_dst_cid: &ConnectionId,
        _header: &[u8],
        _payload: &[u8],
    ) -> bool {
        // Only clients validate Retry packets.
        false
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        let tls = self.tls.as_ref().ok_or(ExportKeyingMaterialError)?;
        tls.export_keying_material(output, label, Some(context))
            .map(|_| ())
            .map_err(|_| ExportKeyingMaterialError)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use bytes::BytesMut;
    use quinn_proto::{
        ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
        Event, ServerConfig, StreamEvent,
    };

    use super::*;

    struct Side {
        ep: Endpoint,
        addr: SocketAddr,
        conn: Option<(ConnectionHandle, Connection)>,
    }

    /// Moves every datagram, endpoint event and due timer between the two sides until quiet.
    fn pump(now: &mut Instant, a: &mut Side, b: &mut Side) {
        for _ in 0..200 {
            let mut moved = false;
            for dir in 0..2 {
                let (from, to) = if dir == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                let mut datagrams = Vec::new();
                if let Some((ch, c)) = from.conn.as_mut() {
                    let mut buf = Vec::new();
                    while let Some(t) = c.poll_transmit(*now, 1, &mut buf) {
                        datagrams.push(buf[..t.size].to_vec());
                        buf.clear();
                    }
                    while let Some(ev) = c.poll_endpoint_events() {
                        if let Some(ce) = from.ep.handle_event(*ch, ev) {
                            c.handle_event(ce);
                        }
                    }
                }
                for d in datagrams {
                    moved = true;
                    let mut buf = Vec::new();
                    let ev = to.ep.handle(
                        *now,
                        from.addr,
                        None,
                        None,
                        BytesMut::from(&d[..]),
                        &mut buf,
                    );
                    match ev {
                        Some(DatagramEvent::NewConnection(inc)) => {
                            let accepted = to.ep.accept(inc, *now, &mut buf, None).unwrap();
                            to.conn = Some(accepted);
                        }
                        Some(DatagramEvent::ConnectionEvent(_, ce)) => {
                            to.conn.as_mut().unwrap().1.handle_event(ce)
                        }
                        Some(DatagramEvent::Response(_)) | None => {}
                    }
                }
            }
            if !moved {
                // Let ACK delays and other timers fire.
                *now += Duration::from_millis(30);
                for s in [&mut *a, &mut *b] {
                    if let Some((_, c)) = s.conn.as_mut() {
                        if c.poll_timeout().is_some_and(|t| t <= *now) {
                            c.handle_timeout(*now);
                            moved = true;
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }
    }

    fn read_all(c: &mut Connection, id: quinn_proto::StreamId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rs = c.recv_stream(id);
        let mut chunks = rs.read(true).unwrap();
        while let Ok(Some(ch)) = chunks.next(usize::MAX) {
            out.extend_from_slice(&ch.bytes);
        }
        let _ = chunks.finalize();
        out
    }

    #[test]
    fn lets_go_of_rustls_after_the_handshake_and_still_updates_keys() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"cue/1".to_vec()];
        let lean = Arc::new(LeanServerConfig::new(Arc::new(tls)).unwrap());
        let server_cfg = ServerConfig::with_crypto(lean.clone());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut ctls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ctls.alpn_protocols = vec![b"cue/1".to_vec()];
        let client_cfg = ClientConfig::new(Arc::new(
            quinn_proto::crypto::rustls::QuicClientConfig::try_from(ctls).unwrap(),
        ));
        let cli_cfg2 = client_cfg.clone();

        let ep = |server: Option<Arc<ServerConfig>>| {
            Endpoint::new(Arc::new(EndpointConfig::default()), server, true, None)
        };
        let mut now = Instant::now();
        let mut srv = Side {
            ep: ep(Some(Arc::new(server_cfg))),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 4433)),
            conn: None,
        };
        let mut cli = Side {
            ep: ep(None),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)),
            conn: None,
        };
        let conn = cli
            .ep
            .connect(now, client_cfg, srv.addr, "localhost")
            .unwrap();
        cli.conn = Some(conn);
        pump(&mut now, &mut cli, &mut srv);
        assert!(srv.conn.is_some(), "server accepted");
        let (sc, cc) = (
            &mut srv.conn.as_mut().unwrap().1,
            &mut cli.conn.as_mut().unwrap().1,
        );
        assert!(
            !sc.is_handshaking() && !cc.is_handshaking(),
            "handshake complete"
        );
        assert_eq!(
            lean.sessions_holding_tls(),
            0,
            "rustls released after the handshake"
        );
        let hd = sc.crypto_session().handshake_data().unwrap();
        let hd = hd.downcast::<HandshakeData>().unwrap();
        assert_eq!(hd.protocol.as_deref(), Some(&b"cue/1"[..]));
        assert_eq!(hd.server_name.as_deref(), Some("localhost"));

        // The device opens the stream and says hello; the edge answers after a key update,
        // which needs the secrets kept after rustls was dropped.
        let id = cc.streams().open(Dir::Bi).unwrap();
        cc.send_stream(id).write(b"hello\n").unwrap();
        pump(&mut now, &mut cli, &mut srv);
        let sc = &mut srv.conn.as_mut().unwrap().1;
        let mut opened = None;
        while let Some(ev) = sc.poll() {
            if let Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) = ev {
                opened = sc.streams().accept(Dir::Bi);
            }
        }
        let sid = opened.expect("stream opened");
        assert_eq!(read_all(sc, sid), b"hello\n");
        for round in 0..3u8 {
            let sc = &mut srv.conn.as_mut().unwrap().1;
            sc.force_key_update();
            sc.send_stream(sid).write(&[b'0' + round, b'\n']).unwrap();
            pump(&mut now, &mut cli, &mut srv);
            let cc = &mut cli.conn.as_mut().unwrap().1;
            assert_eq!(read_all(cc, id), [b'0' + round, b'\n'], "round {round}");
            assert!(
                !cc.is_closed(),
                "client kept the connection through key updates"
            );
        }
        assert_eq!(lean.sessions_holding_tls(), 0);

        // A connection dropped mid-handshake gives its count back.
        let (_, mut half) = cli
            .ep
            .connect(now, cli_cfg2, srv.addr, "localhost")
            .unwrap();
        let mut buf = Vec::new();
        let t = half.poll_transmit(now, 1, &mut buf).unwrap();
        let ev = srv.ep.handle(
            now,
            cli.addr,
            None,
            None,
            BytesMut::from(&buf[..t.size]),
            &mut Vec::new(),
        );
        let Some(DatagramEvent::NewConnection(inc)) = ev else {
            panic!("expected a new connection");
        };
        let (_, accepted) = srv.ep.accept(inc, now, &mut Vec::new(), None).unwrap();
        assert!(accepted.is_handshaking());
        assert_eq!(lean.sessions_holding_tls(), 1);
        drop(accepted);
        assert_eq!(lean.sessions_holding_tls(), 0);
    }
}
