//! A local S3-protocol server for the `--blobs s3://...` tests, and a client
//! to look at what landed in the bucket.
//!
//! `scripts/test` starts one with `scripts/s3 start` and passes its endpoint
//! in `CONTEXTFS_TEST_S3_ENDPOINT` (bucket: `CONTEXTFS_TEST_S3_BUCKET`, default
//! `contextfs-test`). Without that variable the first test that needs S3
//! starts moto's server itself on a free loopback port; it dies with the
//! test process. Every test works under its own random prefix, so tests
//! share one bucket and run in parallel.

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";

/// Credentials for server and migrate processes: moto accepts any, but
/// requests are signed, and without keys the AWS client would go looking
/// for instance credentials off this machine.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ("AWS_REGION", REGION),
];

#[derive(Debug, Clone)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
}

static SERVER: OnceLock<S3Server> = OnceLock::new();

/// The S3 server for this test process (started on first use when the
/// environment names none).
pub fn server() -> &'static S3Server {
    SERVER.get_or_init(|| {
        let bucket = std::env::var("CONTEXTFS_TEST_S3_BUCKET").unwrap_or_else(|_| "contextfs-test".into());
        match std::env::var("CONTEXTFS_TEST_S3_ENDPOINT") {
            Ok(endpoint) if !endpoint.trim().is_empty() => {
                let endpoint = endpoint.trim().trim_end_matches('/').to_string();
                assert!(
                    endpoint.starts_with("http://127.") || endpoint.starts_with("http://localhost"),
                    "tests only talk to a loopback S3 server, not {endpoint}"
                );
                S3Server { endpoint, bucket }
            }
            _ => start_moto(bucket),
        }
    })
}

/// Spawns `python3 -m moto.server` on a free port from a thread that lives as
/// long as the process, with PR_SET_PDEATHSIG so the server dies with us.
fn start_moto(bucket: String) -> S3Server {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("pick a free port");
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("moto-server".into())
        .spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            let ok = child.is_ok();
            let _ = tx.send(child.map(|_| ()).map_err(|e| e.to_string()));
            if ok {
                // The death signal fires when this thread exits: keep it alive.
                loop {
                    std::thread::park();
                }
            }
        })
        .expect("spawn the moto thread");
    if let Err(e) = rx.recv().expect("moto thread reports") {
        panic!(
            "no S3 server: CONTEXTFS_TEST_S3_ENDPOINT is unset and `python3 -m moto.server` failed ({e}); \
             run `pip install 'moto[server]'` or start one with scripts/s3"
        );
    }
    // Wait for it to answer, then create the bucket (moto needs no signature).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match raw_http::request("PUT", &format!("{endpoint}/{bucket}")) {
            Ok(status) if status < 300 || status == 409 => break,
            Ok(status) => panic!("creating bucket {bucket} on moto failed: HTTP {status}"),
            Err(e) if Instant::now() > deadline => {
                panic!("moto at {endpoint} did not answer within 60 s ({e}); is `moto[server]` installed?")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    S3Server { endpoint, bucket }
}

/// One blocking HTTP/1.1 request without a signature (moto accepts those),
/// so the harness needs no runtime here.
mod raw_http {
    use std::io::{Read, Write};

    /// Returns the status code and the body.
    pub fn call(method: &str, url: &str) -> Result<(u16, String), String> {
        let rest = url.strip_prefix("http://").ok_or("not http")?;
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad response: {out:.80}"))?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    pub fn request(method: &str, url: &str) -> Result<u16, String> {
        call(method, url).map(|(status, _)| status)
    }
}

/// Keys of the multipart uploads begun and neither completed nor aborted
/// under `prefix`, when the server answers unsigned requests (moto does);
/// `None` when it does not.
pub fn pending_multipart_keys(prefix: &str) -> Option<Vec<String>> {
    let s = server();
    let url = format!("{}/{}?uploads&prefix={prefix}/", s.endpoint, s.bucket);
    let (status, body) = raw_http::call("GET", &url).ok()?;
    if status != 200 {
        return None;
    }
    Some(
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k.to_string()))
            .filter(|k| k.starts_with(&format!("{prefix}/")))
            .collect(),
    )
}

/// A random prefix of its own for one test.
pub fn fresh_prefix(test: &str) -> String {
    format!("{test}-{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// `s3://bucket/prefix`
pub fn blobs_url(prefix: &str) -> String {
    format!("s3://{}/{prefix}", server().bucket)
}

/// The `serve` / `migrate` flags that put blobs under `prefix`.
pub fn blob_args(prefix: &str) -> Vec<String> {
    vec![
        "--blobs".into(),
        blobs_url(prefix),
        "--s3-endpoint".into(),
        server().endpoint.clone(),
        "--s3-region".into(),
        REGION.into(),
    ]
}

/// Our own S3 client (object_store) to look into the bucket.
pub fn client() -> object_store::aws::AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(&server().bucket)
        .with_endpoint(&server().endpoint)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("S3 test client")
}

/// Every object under `prefix` as `(key relative to the prefix, size)`, sorted.
pub async fn list(prefix: &str) -> Vec<(String, u64)> {
    let store = client();
    let root = ObjectPath::from(prefix);
    let mut out = Vec::new();
    let mut listing = store.list(Some(&root));
    while let Some(meta) = listing.next().await {
        let meta = meta.expect("S3 list");
        let key = meta.location.to_string();
        let rel = key.strip_prefix(&format!("{prefix}/")).unwrap_or(&key).to_string();
        out.push((rel, meta.size));
    }
    out.sort();
    out
}

/// The object key a blob must live under, relative to the prefix.
pub fn blob_key(hash: &contextfs::model::BlobHash) -> String {
    format!("blobs/{}/{}", &hash.as_str()[..2], hash.as_str())
}

/// The bytes of one object, if it exists.
pub async fn get(prefix: &str, rel: &str) -> Option<Vec<u8>> {
    match client().get(&ObjectPath::from(format!("{prefix}/{rel}"))).await {
        Ok(got) => Some(got.bytes().await.expect("S3 body").to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("S3 GET {prefix}/{rel}: {e}"),
    }
}
