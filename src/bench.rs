//! Benchmarks that print their figures. Each starts real replica processes on
//! loopback, so the numbers include gRPC, HTTP/2, RocksDB and verification.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::client::{StoreClient, endpoint};
use crate::entry::{Entry, Envelope, Namespace};
use crate::local::ReplicaProcess;

/// Options of `bench append`.
#[derive(Debug, Clone)]
pub struct AppendOptions {
    pub entries: usize,
    pub ciphertext_bytes: usize,
    pub batch: usize,
    pub exe: PathBuf,
}

/// Creates `count` signed entries with random ciphertext of `size` bytes.
pub fn sample_entries(ns: &Namespace, key: &SigningKey, count: usize, size: usize) -> Vec<Entry> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut ciphertext = vec![0u8; size];
    (0..count)
        .map(|i| {
            rand::fill(&mut ciphertext[..]);
            let envelope = Envelope {
                namespace: ns.clone(),
                author: [0; 32],
                created_ms: now + i as u64,
                kind: "doc_change".into(),
                doc_id: format!("doc-{}", i % 100).into_bytes(),
                deps: vec![],
            };
            Entry::create(envelope, &ciphertext, Some(key))
        })
        .collect()
}

/// `bench append`: one client streams entries into one replica process.
pub async fn append(opts: AppendOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let replica = ReplicaProcess::spawn(&opts.exe, &dir.path().join("db"), false, &[]).await?;
    let ns = Namespace::new("bench", "append")?;
    let key = SigningKey::from_bytes(&rand::random());
    let entries = sample_entries(&ns, &key, opts.entries, opts.ciphertext_bytes);
    let entry_bytes: usize = entries.iter().map(|e| e.data().len()).sum();
    let batches: Vec<Vec<Entry>> = entries.chunks(opts.batch).map(<[Entry]>::to_vec).collect();
    drop(entries);

    let wire = Arc::new(WireCounters::default());
    let mut client = connect_counted(&replica.grpc.to_string(), wire.clone()).await?;
    let before = wire.snapshot();
    let start = Instant::now();
    let summary = client.put_stream(futures::stream::iter(batches)).await?;
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = wire.since(before);
    let (rss, peak) = replica.memory().unwrap_or_default();
    let status = replica.stop().await?;

    let n = opts.entries as f64;
    let per_entry = entry_bytes as f64 / n;
    println!(
        "append: {} entries, {} B ciphertext ({per_entry:.0} B encoded entry), batches of {}",
        opts.entries, opts.ciphertext_bytes, opts.batch
    );
    println!(
        "append: stored {} duplicate {} rejected {} in {secs:.2} s",
        summary.stored, summary.duplicate, summary.rejected
    );
    println!(
        "append: {:.0} entries/s, {:.1} MB/s of entries (target >= 20000 entries/s)",
        n / secs,
        entry_bytes as f64 / secs / 1e6
    );
    println!(
        "append: wire {:.1} B/entry client->replica = entry + {:.1} B (target <= 64 B), {:.1} B/entry replica->client",
        sent as f64 / n,
        sent as f64 / n - per_entry,
        received as f64 / n
    );
    println!(
        "append: replica RSS {:.1} MB (peak {:.1} MB); exit {status}",
        rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    anyhow::ensure!(
        summary.stored as usize == opts.entries,
        "not every entry was stored"
    );
    Ok(())
}

/// Connects a client whose TCP bytes are counted in `wire`.
pub async fn connect_counted(addr: &str, wire: Arc<WireCounters>) -> anyhow::Result<StoreClient> {
    let target = addr.to_owned();
    let channel = endpoint(addr)?
        .connect_with_connector(tower::service_fn(move |_uri| {
            let (target, wire) = (target.clone(), wire.clone());
            async move {
                let stream = TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(TokioIo::new(CountingStream {
                    inner: stream,
                    wire,
                }))
            }
        }))
        .await?;
    Ok(StoreClient::new(channel))
}

/// Bytes written and read on counted connections.
#[derive(Debug, Default)]
pub struct WireCounters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl WireCounters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    pub fn since(&self, before: (u64, u64)) -> (u64, u64) {
        let now = self.snapshot();
        (now.0 - before.0, now.1 - before.1)
    }
}

pin_project_lite::pin_project! {
    struct CountingStream {
        #[pin]
        inner: TcpStream,
        wire: Arc<WireCounters>,
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.wire.received.fetch_add(n as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.wire.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            this.wire.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
