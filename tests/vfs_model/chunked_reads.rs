//! Reading large files by chunks, against a fake server that stores them as
//! chunks and a manifest: a read fetches only the chunks it covers, each
//! checked; a chunk with the wrong bytes is never served (from the server:
//! fetched once more, then EIO; from the cache: removed and fetched again);
//! sequential reads are fetched ahead; a small cache streams a large file;
//! a write to a chunked file assembles it from its chunks.

use std::sync::OnceLock;
use std::time::Duration;

use contextfs::chunks::{manifest_of, Manifest, CHUNKED_MIN};

use crate::data::dir_bytes;
use crate::harness::*;

const MIB: u64 = 1024 * 1024;

/// 40 MiB of bytes that FastCDC cuts like real data (and that are the same
/// in every test), with their manifest.
fn big_file() -> &'static (Vec<u8>, Manifest) {
    static FILE: OnceLock<(Vec<u8>, Manifest)> = OnceLock::new();
    FILE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let bytes: Vec<u8> = (0..40 * MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let manifest = manifest_of(&bytes[..]).unwrap();
        assert!(manifest.chunks.len() >= 8, "{} chunks", manifest.chunks.len());
        (bytes, manifest)
    })
}

/// A server holding large files as chunks plus a manifest (and able to
/// serve the whole blob too, which a chunked reader must never ask for).
#[derive(Default)]
struct ChunkServer {
    blobs: MapSource,
    manifests: Mutex<HashMap<BlobHash, Manifest>>,
    /// Chunks served with their bytes changed (corrupted on the server).
    corrupt: Mutex<std::collections::HashSet<BlobHash>>,
    fetched: Mutex<Vec<BlobHash>>,
    manifest_calls: AtomicUsize,
    /// Every fetch fails (a dead server).
    down: std::sync::atomic::AtomicBool,
    /// With a directory set: fetches run one at a time, and each measures
    /// the cache directory once its bytes are all in the fill (the peak: the
    /// fill in `tmp/` and every blob, before the fill is published).
    measure: Mutex<Option<PathBuf>>,
    largest: AtomicUsize,
}

impl ChunkServer {
    fn put_chunked(&self, bytes: &[u8], manifest: &Manifest) {
        for span in manifest.spans() {
            let part = &bytes[span.offset as usize..(span.offset + span.size) as usize];
            assert_eq!(self.blobs.put(part), manifest.chunks[span.index].hash);
        }
        self.blobs.put(bytes);
        self.manifests
            .lock()
            .unwrap()
            .insert(manifest.hash.clone(), manifest.clone());
    }

    fn fetches_of(&self, hash: &BlobHash) -> usize {
        self.fetched.lock().unwrap().iter().filter(|h| *h == hash).count()
    }

    fn fetch_count(&self) -> usize {
        self.fetched.lock().unwrap().len()
    }
}

impl BlobSource for ChunkServer {
    fn fetch(&self, hash: &BlobHash, fill: &mut CacheFill) -> Result<(), CacheError> {
        self.fetched.lock().unwrap().push(hash.clone());
        if self.down.load(Ordering::SeqCst) {
            return Err(CacheError::Fetch {
                hash: hash.clone(),
                message: "server unreachable".into(),
            });
        }
        if self.corrupt.lock().unwrap().contains(hash) {
            let mut bytes = self.blobs.get(hash).unwrap();
            bytes[100] ^= 0xff;
            return fill.write(&bytes);
        }
        let measure = self.measure.lock().unwrap();
        self.blobs.fetch(hash, fill)?;
        if let Some(dir) = measure.as_ref() {
            // Nothing else can grow the directory now: other fetches wait.
            self.largest.fetch_max(dir_bytes(dir) as usize, Ordering::SeqCst);
        }
        Ok(())
    }

    fn manifest(&self, hash: &BlobHash) -> Result<Option<Manifest>, CacheError> {
        self.manifest_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(CacheError::Fetch {
                hash: hash.clone(),
                message: "server unreachable".into(),
            });
        }
        Ok(self.manifests.lock().unwrap().get(hash).cloned())
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    cache_dir: PathBuf,
    state_dir: PathBuf,
    server: Arc<ChunkServer>,
    listing: TreeListing,
}

impl Setup {
    fn new() -> Self {
        let (bytes, manifest) = big_file();
        let tmp = tempfile::tempdir().unwrap();
        let server = Arc::new(ChunkServer::default());
        server.put_chunked(bytes, manifest);
        let listing = tree_listing(
            1,
            vec![TreeEntry {
                path: "big.bin".into(),
                id: 7,
                kind: NodeKind::File,
                mode: 0o644,
                size: manifest.size,
                hash: manifest.hash.clone(),
                version: 1,
                modified_at: TIME.into(),
                accessed_at: None,
            }],
        );
        Self {
            cache_dir: tmp.path().join("cache"),
            state_dir: tmp.path().join("state"),
            _tmp: tmp,
            server,
            listing,
        }
    }

    /// A mount of the listing with a cache of `cache_bytes` (a new process's
    /// view of the cache directory each time).
    fn mount(&self, cache_bytes: u64) -> (Vfs, Arc<BlobCache>) {
        let cache = Arc::new(BlobCache::open(&self.cache_dir, cache_bytes).unwrap());
        let config = VfsConfig {
            state_dir: self.state_dir.clone(),
            read_only: false,
            agent_id: None,
            durability: contextfs::vfs::Durability::DEFAULT,
        };
        let vfs = Vfs::new(config, cache.clone(), self.server.clone()).unwrap();
        vfs.load(&self.listing, None).unwrap();
        (vfs, cache)
    }
}

fn chunk_at(manifest: &Manifest, offset: u64) -> usize {
    manifest
        .spans()
        .iter()
        .position(|s| s.offset + s.size > offset)
        .unwrap()
}

fn cached_names(cache: &BlobCache) -> Vec<BlobHash> {
    let mut names = Vec::new();
    for prefix in std::fs::read_dir(cache.root().join("blobs")).unwrap().flatten() {
        for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            names.push(BlobHash::parse(blob.file_name().to_str().unwrap()).unwrap());
        }
    }
    names
}

/// Waits until no readahead is running (the fetch count stops moving).
fn settle(server: &ChunkServer) {
    let mut last = server.fetch_count();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.fetch_count();
        if now == last {
            return;
        }
        last = now;
    }
}

#[test]
fn a_small_read_fetches_one_chunk_and_a_far_read_one_more() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    let (vfs, cache) = setup.mount(1 << 30);
    let ino = ino_of(&vfs, "big.bin").unwrap();
    assert!(vfs.open_would_fetch(ino, RO), "a cold open needs the manifest");
    let fh = vfs.open(ino, RO).unwrap();
    assert_eq!(vfs.read(fh, 0, 100).unwrap(), bytes[..100]);
    settle(&setup.server);
    assert_eq!(
        *setup.server.fetched.lock().unwrap(),
        vec![manifest.chunks[0].hash.clone()]
    );
    assert_eq!(cached_names(&cache), vec![manifest.chunks[0].hash.clone()]);

    let far = 33 * MIB + 12345;
    let far_chunk = chunk_at(manifest, far);
    assert!(vfs.read_would_fetch(fh, far, 4096));
    assert_eq!(
        vfs.read(fh, far, 4096).unwrap(),
        bytes[far as usize..far as usize + 4096]
    );
    assert!(!vfs.read_would_fetch(fh, far, 4096));
    settle(&setup.server);
    assert_eq!(setup.server.fetch_count(), 2);
    assert_eq!(setup.server.fetches_of(&manifest.chunks[far_chunk].hash), 1);
    assert_eq!(setup.server.fetches_of(&manifest.hash), 0, "never the whole file");
    vfs.release(fh).unwrap();

    // The manifest is remembered: the next open needs nothing from the
    // server, unless it writes (the copy to write needs every chunk).
    assert!(!vfs.open_would_fetch(ino, RO));
    assert!(vfs.open_would_fetch(ino, RW));
    let fh = vfs.open(ino, RO).unwrap();
    assert_eq!(vfs.read(fh, 50, 50).unwrap(), bytes[50..100]);
    assert_eq!(setup.server.manifest_calls.load(Ordering::SeqCst), 1);
    vfs.release(fh).unwrap();
}

#[test]
fn a_sequential_read_is_fetched_ahead_and_whole() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    let (vfs, _cache) = setup.mount(1 << 30);
    let fh = vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO).unwrap();
    let step = 128 * 1024;
    let mut read = Vec::with_capacity(bytes.len());
    while read.len() < 3 * MIB as usize {
        read.extend_from_slice(&vfs.read(fh, read.len() as u64, step as u32).unwrap());
    }
    settle(&setup.server);
    // Chunks the reader has not reached were fetched ahead of it, within
    // the readahead bounds.
    let reached = chunk_at(manifest, read.len() as u64 - 1);
    let ahead: Vec<usize> = (reached + 1..manifest.chunks.len())
        .filter(|i| setup.server.fetches_of(&manifest.chunks[*i].hash) > 0)
        .collect();
    assert!(!ahead.is_empty(), "nothing was fetched ahead of a sequential reader");
    let spans = manifest.spans();
    for i in &ahead {
        assert!(
            spans[*i].offset < read.len() as u64 + 16 * MIB,
            "chunk {i} is too far ahead"
        );
        assert!(*i <= reached + 8, "chunk {i} is too many chunks ahead");
    }
    loop {
        let chunk = vfs.read(fh, read.len() as u64, step as u32).unwrap();
        if chunk.is_empty() {
            break;
        }
        read.extend_from_slice(&chunk);
    }
    assert!(read == *bytes, "the bytes read differ from the file");
    settle(&setup.server);
    for chunk in &manifest.chunks {
        assert_eq!(setup.server.fetches_of(&chunk.hash), 1, "each chunk is fetched once");
    }
    assert_eq!(setup.server.fetches_of(&manifest.hash), 0);
    vfs.release(fh).unwrap();
}

#[test]
fn a_small_cache_streams_the_whole_file_and_stays_within_its_limit() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    let limit = 16 * MIB;
    let (vfs, cache) = setup.mount(limit);
    *setup.server.measure.lock().unwrap() = Some(cache.root().to_path_buf());
    let fh = vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO).unwrap();
    let mut offset = 0u64;
    let mut same = true;
    while offset < manifest.size {
        let chunk = vfs.read(fh, offset, 256 * 1024).unwrap();
        same &= chunk[..] == bytes[offset as usize..offset as usize + chunk.len()];
        offset += chunk.len() as u64;
    }
    settle(&setup.server);
    assert!(same, "the bytes read differ from the file");
    let largest = setup.server.largest.load(Ordering::SeqCst) as u64;
    assert!(largest > limit / 2, "measured while the cache was full: {largest}");
    assert!(
        largest <= limit,
        "the cache directory held {largest} bytes, over {limit}"
    );
    assert!(cache.usage().0 <= limit);
    vfs.release(fh).unwrap();
}

#[test]
fn a_chunk_corrupted_on_the_server_is_never_served() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    let bad = manifest.spans()[3];
    setup
        .server
        .corrupt
        .lock()
        .unwrap()
        .insert(manifest.chunks[3].hash.clone());
    let (vfs, cache) = setup.mount(1 << 30);
    let fh = vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO).unwrap();
    let err = vfs.read(fh, bad.offset + 10, 4096).unwrap_err();
    assert_eq!(err.errno, libc::EIO);
    assert_eq!(
        setup.server.fetches_of(&manifest.chunks[3].hash),
        2,
        "fetched once more, then EIO"
    );
    assert!(!cached_names(&cache).contains(&manifest.chunks[3].hash));
    // A read that spans into it fails whole (a short read would show zeros).
    assert_eq!(errno(vfs.read(fh, bad.offset - 100, 4096)), Err(libc::EIO));
    // Other ranges read fine.
    let other = manifest.spans()[6];
    assert_eq!(
        vfs.read(fh, other.offset, 4096).unwrap(),
        bytes[other.offset as usize..other.offset as usize + 4096]
    );
    assert_eq!(vfs.read(fh, 0, 4096).unwrap(), bytes[..4096]);
    vfs.release(fh).unwrap();
}

#[test]
fn a_chunk_corrupted_in_the_cache_is_caught_and_fetched_again() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    let span = manifest.spans()[2];
    let hash = &manifest.chunks[2].hash;
    {
        let (vfs, cache) = setup.mount(1 << 30);
        let fh = vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO).unwrap();
        vfs.read(fh, span.offset, 4096).unwrap();
        vfs.release(fh).unwrap();
        // Bytes change on disk under the cache (a bad disk, a stray write).
        let path = cache.path_of(hash);
        let mut on_disk = std::fs::read(&path).unwrap();
        on_disk[10] ^= 0x55;
        std::fs::write(&path, on_disk).unwrap();
    }
    settle(&setup.server);
    let before = setup.server.fetches_of(hash);
    let (vfs, cache) = setup.mount(1 << 30);
    let fh = vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO).unwrap();
    assert_eq!(
        vfs.read(fh, span.offset, 4096).unwrap(),
        bytes[span.offset as usize..span.offset as usize + 4096]
    );
    assert_eq!(setup.server.fetches_of(hash), before + 1, "fetched again");
    assert_eq!(
        std::fs::read(cache.path_of(hash)).unwrap(),
        bytes[span.offset as usize..(span.offset + span.size) as usize]
    );
    vfs.release(fh).unwrap();
}

#[test]
fn a_write_to_a_chunked_file_assembles_it_from_its_chunks() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    let (vfs, _cache) = setup.mount(1 << 30);
    let ino = ino_of(&vfs, "big.bin").unwrap();
    let fh = vfs
        .open(
            ino,
            OpenMode {
                read: false,
                write: true,
                truncate: false,
                append: true,
            },
        )
        .unwrap();
    vfs.write(fh, 0, b"one more line\n").unwrap();
    vfs.flush(fh).unwrap();
    vfs.release(fh).unwrap();
    assert_eq!(
        setup.server.fetches_of(&manifest.hash),
        0,
        "assembled from chunks, not downloaded whole"
    );
    let mut expected = bytes.clone();
    expected.extend_from_slice(b"one more line\n");
    let fh = vfs.open(ino, RO).unwrap();
    let got = read_all(&vfs, fh);
    assert!(got == expected, "the appended file differs ({} bytes)", got.len());
    vfs.release(fh).unwrap();
}

#[test]
fn a_whole_blob_in_the_cache_is_read_whole_and_a_dead_server_gives_eio() {
    let setup = Setup::new();
    let (bytes, manifest) = big_file();
    // The mount that wrote the file keeps it whole after its commit.
    let (vfs, cache) = setup.mount(1 << 30);
    cache.insert_bytes(&manifest.hash, bytes).unwrap();
    let ino = ino_of(&vfs, "big.bin").unwrap();
    assert!(!vfs.open_would_fetch(ino, RO));
    let fh = vfs.open(ino, RO).unwrap();
    assert_eq!(
        vfs.read(fh, 20 * MIB, 4096).unwrap(),
        bytes[20 * MIB as usize..20 * MIB as usize + 4096]
    );
    assert_eq!(setup.server.manifest_calls.load(Ordering::SeqCst), 0);
    assert_eq!(setup.server.fetch_count(), 0);
    vfs.release(fh).unwrap();
    drop(vfs);
    std::fs::remove_file(cache.path_of(&manifest.hash)).unwrap();

    // Chunked, then the server dies: reads of missing chunks fail at once
    // with EIO; chunks already here still read.
    let (vfs, _cache) = setup.mount(1 << 30);
    let fh = vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO).unwrap();
    assert_eq!(vfs.read(fh, 0, 4096).unwrap(), bytes[..4096]);
    setup.server.down.store(true, Ordering::SeqCst);
    assert_eq!(errno(vfs.read(fh, 30 * MIB, 4096)), Err(libc::EIO));
    assert_eq!(vfs.read(fh, 4096, 4096).unwrap(), bytes[4096..8192]);
    vfs.release(fh).unwrap();
    // A cold open of a large file needs the manifest: EIO too, not a hang.
    let (vfs, _cache) = setup.mount(1 << 30);
    assert_eq!(errno(vfs.open(ino_of(&vfs, "big.bin").unwrap(), RO)), Err(libc::EIO));
}

#[test]
fn files_below_the_chunked_size_never_ask_for_a_manifest() {
    let setup = Setup::new();
    let small = vec![7u8; (CHUNKED_MIN - 1) as usize];
    let listing = tree_listing(1, vec![file_entry(&setup.server.blobs, "small.bin", 9, 1, &small)]);
    let cache = Arc::new(BlobCache::open(&setup.cache_dir, 1 << 30).unwrap());
    let config = VfsConfig {
        state_dir: setup.state_dir.clone(),
        read_only: false,
        agent_id: None,
        durability: contextfs::vfs::Durability::DEFAULT,
    };
    let vfs = Vfs::new(config, cache, setup.server.clone()).unwrap();
    vfs.load(&listing, None).unwrap();
    assert!(read_path(&vfs, "small.bin") == small);
    assert_eq!(setup.server.manifest_calls.load(Ordering::SeqCst), 0);
}
