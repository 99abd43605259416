use super::*;

/// Deterministic pseudo-random bytes (xorshift), so chunk boundaries vary.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn chunks_concatenate_to_the_file_and_hash_to_their_names() {
    let data = noise(20 * 1024 * 1024 + 12_345, 7);
    let mut chunker = Chunker::new(&data[..]);
    let mut joined = Vec::new();
    for chunk in chunker.by_ref() {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.offset, joined.len() as u64);
        assert_eq!(BlobHash::of(&chunk.data), chunk.hash);
        assert!(chunk.data.len() as u64 <= CHUNK_MAX as u64);
        joined.extend_from_slice(&chunk.data);
    }
    assert_eq!(joined, data);
    assert_eq!(chunker.whole(), (BlobHash::of(&data), data.len() as u64));
}

#[test]
fn an_append_changes_only_the_last_chunks() {
    let base = noise(64 * 1024 * 1024, 3);
    let mut appended = base.clone();
    appended.extend_from_slice(&noise(1024 * 1024, 9));
    let before = manifest_of(&base[..]).unwrap();
    let after = manifest_of(&appended[..]).unwrap();
    before.check_shape().unwrap();
    after.check_shape().unwrap();
    let old: std::collections::HashSet<_> = before.chunks.iter().map(|c| &c.hash).collect();
    let new_bytes: u64 = after
        .chunks
        .iter()
        .filter(|c| !old.contains(&c.hash))
        .map(|c| c.size)
        .sum();
    // The old last chunk is cut again with the appended MiB behind it.
    assert!(
        new_bytes <= CHUNK_MAX as u64 + 1024 * 1024,
        "{new_bytes} new bytes after a 1 MiB append"
    );
}

#[test]
fn an_insert_in_the_middle_changes_few_chunks() {
    let base = noise(48 * 1024 * 1024, 5);
    let mut edited = base[..20 * 1024 * 1024].to_vec();
    edited.extend_from_slice(b"an inserted line\n");
    edited.extend_from_slice(&base[20 * 1024 * 1024..]);
    let before = manifest_of(&base[..]).unwrap();
    let after = manifest_of(&edited[..]).unwrap();
    let old: std::collections::HashSet<_> = before.chunks.iter().map(|c| &c.hash).collect();
    let changed = after.chunks.iter().filter(|c| !old.contains(&c.hash)).count();
    assert!(changed <= 2, "{changed} of {} chunks changed", after.chunks.len());
}

#[test]
fn spans_covering_finds_the_chunks_of_a_range() {
    let m = Manifest {
        hash: BlobHash::of(b""),
        size: 30,
        chunks: [10u64, 10, 10]
            .iter()
            .map(|&size| ChunkRef {
                hash: BlobHash::of(b"x"),
                size,
            })
            .collect(),
    };
    let spans = m.spans();
    let idx = |o, l| spans_covering(&spans, o, l).iter().map(|s| s.index).collect::<Vec<_>>();
    assert_eq!(idx(0, 1), vec![0]);
    assert_eq!(idx(9, 2), vec![0, 1]);
    assert_eq!(idx(10, 10), vec![1]);
    assert_eq!(idx(5, 100), vec![0, 1, 2]);
    assert_eq!(idx(30, 5), Vec::<usize>::new());
    assert_eq!(idx(3, 0), Vec::<usize>::new());
}

#[test]
fn check_shape_refuses_sizes_that_do_not_add_up() {
    let chunk = |size| ChunkRef {
        hash: BlobHash::of(b"x"),
        size,
    };
    let mut m = Manifest {
        hash: BlobHash::of(b""),
        size: 5,
        chunks: vec![chunk(2), chunk(2)],
    };
    assert!(m.check_shape().unwrap_err().contains("add up to 4"));
    m.chunks.push(chunk(1));
    m.check_shape().unwrap();
    m.chunks = vec![chunk(0), chunk(5)];
    assert!(m.check_shape().is_err());
    m.chunks = vec![];
    assert!(m.check_shape().is_err());
}
