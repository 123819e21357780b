use super::*;

const WORK: Option<u8> = Some(4);

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

/// A 64 MiB sparse file with data at its start, in its middle and at its end.
fn sparse_disk(dir: &Path) -> (PathBuf, Vec<(u64, Vec<u8>)>) {
    let path = dir.join("private.img");
    let mut f = File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut pieces = Vec::new();
    for (i, offset) in [0u64, 20 << 20, (64 << 20) - 4096].into_iter().enumerate() {
        let data: Vec<u8> = (0..4096u32).map(|b| (b as u8) ^ (i as u8 * 37)).collect();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&data).unwrap();
        pieces.push((offset, data));
    }
    (path, pieces)
}

fn write_bundle(dir: &Path, disk: &Path, pass: &str) -> PathBuf {
    let path = dir.join("work.bulkhead");
    let mut w = BundleWriter::create(&path, secret(pass), WORK).unwrap();
    w.add_bytes("bundle.json", br#"{"partition":"work"}"#)
        .unwrap();
    w.add_bytes("empty", b"").unwrap();
    w.add_file("private.img", disk, &mut |_| {}).unwrap();
    w.finish().unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".import-"))
        .collect()
}

#[test]
fn a_sparse_disk_round_trips_byte_identical_and_stays_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = sparse_disk(tmp.path());
    let bundle = write_bundle(tmp.path(), &disk, "correct horse");
    assert!(fs::metadata(&bundle).unwrap().len() < 1 << 20, "compressed");
    let staging = tmp.path().join("staging");
    let mut seen = UnpackProgress::default();
    let out = unpack(&bundle, secret("correct horse"), &staging, &mut |p| {
        seen = p
    })
    .unwrap();
    assert_eq!(seen.data_bytes, 3 * 4096 + 20, "data bytes of every entry");
    let file_len = fs::metadata(&bundle).unwrap().len();
    assert!(
        seen.bundle_bytes > 0 && seen.bundle_bytes <= file_len,
        "{} bundle bytes read of {file_len}",
        seen.bundle_bytes
    );
    assert_eq!(
        out.names().collect::<Vec<_>>(),
        ["bundle.json", "empty", "private.img"]
    );
    assert_eq!(
        out.text("bundle.json").unwrap().unwrap(),
        r#"{"partition":"work"}"#
    );
    assert_eq!(fs::read(out.path("empty").unwrap()).unwrap(), b"");
    let copy = out.path("private.img").unwrap();
    assert_eq!(fs::read(copy).unwrap(), fs::read(&disk).unwrap());
    use std::os::unix::fs::MetadataExt;
    let blocks = fs::metadata(copy).unwrap().blocks();
    assert!(blocks * 512 < 4 << 20, "{blocks} blocks: not sparse");
    drop(out);
    assert!(leftovers(&staging).is_empty());
}

#[test]
fn a_wrong_passphrase_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = sparse_disk(tmp.path());
    let bundle = write_bundle(tmp.path(), &disk, "right");
    let staging = tmp.path().join("staging");
    let err = unpack(&bundle, secret("wrong"), &staging, &mut |_| {}).unwrap_err();
    assert!(matches!(err, BundleError::WrongPassphrase(_)), "{err}");
    assert!(leftovers(&staging).is_empty());
}

#[test]
fn any_changed_byte_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = sparse_disk(tmp.path());
    let bundle = write_bundle(tmp.path(), &disk, "pw");
    let good = fs::read(&bundle).unwrap();
    let staging = tmp.path().join("staging");
    // The header (passphrase stanza), the first payload chunk, the last bytes.
    for at in [40, good.len() / 2, good.len() - 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        fs::write(&bundle, &bad).unwrap();
        let err = unpack(&bundle, secret("pw"), &staging, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::Damaged { .. } | BundleError::WrongPassphrase(_)
            ),
            "byte {at}: {err}"
        );
        assert!(leftovers(&staging).is_empty(), "byte {at}");
    }
}

#[test]
fn a_truncated_bundle_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, _) = sparse_disk(tmp.path());
    let bundle = write_bundle(tmp.path(), &disk, "pw");
    let good = fs::read(&bundle).unwrap();
    let staging = tmp.path().join("staging");
    for keep in [good.len() - 1, good.len() - 17, good.len() / 2, 10] {
        fs::write(&bundle, &good[..keep]).unwrap();
        let err = unpack(&bundle, secret("pw"), &staging, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BundleError::Damaged { .. }), "{keep}: {err}");
        assert!(leftovers(&staging).is_empty());
    }
}

/// Plaintext records encrypted properly: what a hostile exporter can make.
fn forged(dir: &Path, plain: &[u8]) -> PathBuf {
    let path = dir.join("forged.bulkhead");
    let mut recipient = age::scrypt::Recipient::new(secret("pw"));
    recipient.set_work_factor(4);
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .unwrap();
    let mut stream = enc.wrap_output(File::create(&path).unwrap()).unwrap();
    let mut z = zstd::Encoder::new(Vec::new(), 1).unwrap();
    z.write_all(plain).unwrap();
    stream.write_all(&z.finish().unwrap()).unwrap();
    stream.finish().unwrap();
    path
}

fn record(name: &str, size: u64, extents: &[(u64, &[u8])]) -> Vec<u8> {
    let mut r = vec![b'F'];
    r.extend((name.len() as u16).to_le_bytes());
    r.extend(name.as_bytes());
    r.extend(size.to_le_bytes());
    let mut hash = Sha256::new();
    for (offset, data) in extents {
        let head = extent_header(*offset, data.len() as u64);
        hash.update(head);
        hash.update(data);
        r.extend(head);
        r.extend(*data);
    }
    r.extend(extent_header(END_OF_EXTENTS, 0));
    r.extend(hash.finalize());
    r
}

fn with_end(records: &[Vec<u8>]) -> Vec<u8> {
    let mut plain = MAGIC.to_vec();
    plain.extend(VERSION.to_le_bytes());
    for r in records {
        plain.extend(r);
    }
    plain.push(b'E');
    plain.extend((records.len() as u32).to_le_bytes());
    let digest = Sha256::digest(&plain);
    plain.extend(digest);
    plain
}

#[test]
fn hostile_names_and_extents_from_a_valid_encryption_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("dot-dot", vec![record("../escape", 1, &[(0, b"x")])]),
        ("absolute", vec![record("/etc/passwd", 1, &[(0, b"x")])]),
        ("hidden", vec![record(".bashrc", 1, &[(0, b"x")])]),
        ("deep", vec![record("a/b/c", 1, &[(0, b"x")])]),
        (
            "repeated",
            vec![record("a", 1, &[(0, b"x")]), record("a", 1, &[(0, b"y")])],
        ),
        ("past its size", vec![record("a", 1, &[(0, b"xy")])]),
        (
            "overlapping",
            vec![record("a", 8, &[(0, b"xyz"), (2, b"z")])],
        ),
        ("huge", vec![record("a", MAX_FILE_SIZE + 1, &[])]),
    ];
    for (what, records) in cases {
        let bundle = forged(tmp.path(), &with_end(&records));
        let err = unpack(&bundle, secret("pw"), &staging, &mut |_| {}).unwrap_err();
        assert!(matches!(err, BundleError::Damaged { .. }), "{what}: {err}");
        assert!(leftovers(&staging).is_empty(), "{what}");
        assert!(!tmp.path().join("escape").exists());
    }
    // The same forging path with sound records is accepted: the refusals above are the
    // checks', not the forging's.
    let ok = forged(tmp.path(), &with_end(&[record("a", 4, &[(1, b"xy")])]));
    let out = unpack(&ok, secret("pw"), &staging, &mut |_| {}).unwrap();
    assert_eq!(fs::read(out.path("a").unwrap()).unwrap(), b"\0xy\0");
}

#[test]
fn a_wrong_end_count_or_digest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let mut plain = with_end(&[record("a", 1, &[(0, b"x")])]);
    let n = plain.len();
    plain[n - 1] ^= 1;
    let bundle = forged(tmp.path(), &plain);
    let err = unpack(&bundle, secret("pw"), &staging, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    let mut plain = with_end(&[record("a", 1, &[(0, b"x")])]);
    plain.extend(b"more");
    let bundle = forged(tmp.path(), &plain);
    assert!(unpack(&bundle, secret("pw"), &staging, &mut |_| {}).is_err());
}

#[test]
fn an_unfinished_writer_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.bulkhead");
    let mut w = BundleWriter::create(&path, secret("pw"), WORK).unwrap();
    w.add_bytes("a", b"1").unwrap();
    assert!(w.add_bytes("a", b"2").is_err(), "repeated names refused");
    drop(w);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn entry_names_cannot_leave_their_directory() {
    for ok in [
        "private.img",
        "snapshot/memory",
        "template/root.sqfs",
        "a-b_c.1",
    ] {
        assert!(valid_entry_name(ok), "{ok}");
    }
    for bad in [
        "", ".", "..", "../x", "a/../b", "/abs", "a/", "/", "a//b", ".hidden", "a/.x", "a/b/c",
        "sp ace", "nl\n", "é",
    ] {
        assert!(!valid_entry_name(bad), "{bad:?}");
    }
    assert!(!valid_entry_name(&"a".repeat(MAX_NAME + 1)));
}
