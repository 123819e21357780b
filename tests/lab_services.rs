//! Two partitions of the `debian-12` template under one supervisor (`lab-supervise`),
//! their guest agents in X, and the service broker deciding what crosses with a policy:
//! text and a PNG image copied in `lab` arrive byte-exact in `peer` when the policy
//! allows the paste, once, and never when it denies it; `bulkhead-copy` in `lab` asks
//! where to, and the files land in `peer`'s `~/Incoming/lab/` with the same sha256,
//! under names that overwrite nothing; `bulkhead-open` in `lab`, naming no target, starts
//! `peer`'s Firefox on the link where the policy sends `@default`; a hostile frame from `lab`'s guest (a file offer
//! naming `../escape`) cuts `lab`'s agent off, nothing lands, and `peer` works on.
//! Runs directly on /dev/kvm with VT-x/AMD-V, otherwise in the lab.

use bulkhead_tests::lab::{run_guest, template_image, DiskSource, GuestRun, LabDisk};

const TEXT: &str = "copied in lab: 42 é ✓";
const SECOND_TEXT: &str = "denied text";
const AFTER: &str = "peer still here";
const LINK: &str = "https://example.org/lab-link";

/// A small real PNG (a 64x64 gradient), base64 for the guest script.
fn png() -> Vec<u8> {
    let layout = vmm_core::devices::framebuffer::FramebufferLayout::new(64, 64).unwrap();
    let pixels: Vec<u8> = (0..64 * 64)
        .flat_map(|i: u32| [(i % 64 * 4) as u8, (i / 64 * 4) as u8, 0x80, 0xff])
        .collect();
    let mut out = Vec::new();
    vmm_core::devices::framebuffer::write_png(&layout, &pixels, &mut out).unwrap();
    out
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= c.len() {
                s.push(A[(n >> shift & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The same script runs in both partitions; each does its part by its name. The host
/// paces them through `/dev/hvc0` lines.
fn script(png_b64: &str) -> String {
    format!(
        r#"a=/usr/local/lib/bulkhead/bulkhead-agent
until [ -e /run/bulkhead/app-ready ]; do sleep 1; done
me=$(hostname)
as_user() {{ setpriv --reuid=1000 --regid=1000 --init-groups env HOME=/home/user DISPLAY=:0 "$@"; }}
next() {{ read -r line < /dev/hvc0; echo "GOT[$me][$line]"; }}
echo "GUEST-UP[$me]"
if [ "$me" = lab ]; then
  $a clip-set '{TEXT}' --seconds 900 > /dev/null 2>&1 &
  sleep 3; echo GUEST-OWNS-1
  next
  echo '{png_b64}' | base64 -d > /tmp/image.png
  echo "PNG-SHA[$(sha256sum /tmp/image.png | cut -d' ' -f1)]"
  $a clip-set --png /tmp/image.png --seconds 900 > /dev/null 2>&1 &
  sleep 3; echo GUEST-OWNS-2
  next
  $a clip-set '{SECOND_TEXT}' --seconds 900 > /dev/null 2>&1 &
  sleep 3; echo GUEST-OWNS-3
  next
  mkdir -p /home/user/out
  head -c 3000000 /dev/urandom > /home/user/out/data.bin
  printf 'first' > '/home/user/out/notes (1).txt'
  chown -R 1000:1000 /home/user/out
  echo "SRC-SHA[$(sha256sum /home/user/out/data.bin | cut -d' ' -f1)]"
  if as_user /usr/local/bin/bulkhead-copy /home/user/out/data.bin '/home/user/out/notes (1).txt' > /tmp/copy.log 2>&1; then r=ok; else r=failed; fi
  echo "COPY-DONE[$r][$(tr '\n' ' ' < /tmp/copy.log)]"
  [ -f /home/user/out/data.bin ] && echo SOURCE-KEPT
  next
  if as_user /usr/local/bin/bulkhead-open '{LINK}' > /tmp/open.log 2>&1; then r=ok; else r=failed; fi
  echo "OPEN-DONE[$r][$(tr '\n' ' ' < /tmp/open.log)]"
  next
  # A compromised guest writes its own frame on the agent's console: a file offer
  # naming ../escape (length 31: kind 0x86, offer 9, copy, 1 file, 9-byte name, size 5).
  printf '\037\000\000\000\206\011\000\000\000\000\001\000\000\000\011\000\000\000../escape\005\000\000\000\000\000\000\000' > /dev/hvc1
  echo HOSTILE-SENT
else
  i=0
  until got=$($a clip-get 2>&1) && [ "$got" = '{TEXT}' ]; do
    i=$((i + 1)); [ $i -gt 300 ] && break; sleep 1
  done
  echo "PEER-READ[$got]"
  i=0
  until $a clip-get --out /tmp/got.png > /dev/null 2>&1 && [ -s /tmp/got.png ] && head -c 4 /tmp/got.png | grep -q PNG; do
    i=$((i + 1)); [ $i -gt 300 ] && break; sleep 1
  done
  echo "PEER-PNG[$(sha256sum /tmp/got.png | cut -d' ' -f1)]"
  mkdir -p /home/user/Incoming/lab
  printf 'older' > '/home/user/Incoming/lab/notes (1).txt'
  chown -R 1000:1000 /home/user/Incoming
  echo PEER-PREPARED
  i=0
  until [ -f /home/user/Incoming/lab/data.bin ]; do
    i=$((i + 1)); [ $i -gt 600 ] && break; sleep 1
  done
  echo "DST-SHA[$(sha256sum /home/user/Incoming/lab/data.bin | cut -d' ' -f1)]"
  sleep 2
  for f in /home/user/Incoming/lab/*; do echo "DST-FILE[$(basename "$f")][$(cat "$f" | head -c 5)]"; done
  next
  i=0
  until pgrep -f 'lab-link' > /dev/null; do
    i=$((i + 1)); [ $i -gt 120 ] && break; sleep 1
  done
  echo "OPENED[$(pgrep -f 'lab-link' | wc -l)][$(ps -o user= -o comm= -p $(pgrep -f 'lab-link' | head -n 1) 2>/dev/null)]"
  next
  echo "ESCAPED[$(find / -xdev -name escape 2>/dev/null | wc -l)]"
  echo PEER-ALIVE
fi
"#
    )
}

#[test]
fn clipboard_and_files_cross_between_two_partitions_only_as_the_policy_allows() {
    let png = png();
    let steps: Vec<String> = [
        "wait-serial:GUEST-UP[lab]",
        "wait-agent",
        "spawn:peer",
        "use:peer",
        "wait-serial:GUEST-UP[peer]",
        "wait-agent",
        "use:lab",
        "policy:bulkhead.ClipboardPaste * lab peer allow;bulkhead.FileCopy * lab peer ask",
        // Text: allowed, and only once.
        "wait-serial:GUEST-OWNS-1",
        "clipboard-copy",
        "use:peer",
        "clipboard-paste",
        "clipboard-paste",
        "wait-serial:PEER-READ[",
        // A PNG image: allowed.
        "use:lab",
        "console:png\\n",
        "wait-serial:GUEST-OWNS-2",
        "clipboard-copy",
        "use:peer",
        "clipboard-paste",
        "wait-serial:PEER-PNG[",
        // Denied now (an edit of the policy applies to the next request).
        "use:lab",
        "policy:bulkhead.ClipboardPaste * lab peer deny;bulkhead.FileCopy * lab peer ask",
        "console:deny\\n",
        "wait-serial:GUEST-OWNS-3",
        "clipboard-copy",
        "use:peer",
        "clipboard-paste",
        "wait-serial:PEER-PREPARED",
        // Files: bulkhead-copy in lab asks; the person picks peer.
        "use:lab",
        "console:files\\n",
        "answer:peer",
        "wait-serial:COPY-DONE[",
        "use:peer",
        "wait-serial:DST-FILE[notes (1) (1).txt]",
        // A link with no target goes where the policy sends `@default`: peer's browser.
        "use:lab",
        "policy:bulkhead.ClipboardPaste * lab peer deny;bulkhead.FileCopy * lab peer ask;bulkhead.OpenURL * lab @default allow target=peer",
        "console:open\\n",
        "wait-serial:OPEN-DONE[",
        "use:peer",
        "console:check\\n",
        "wait-serial:OPENED[",
        // A hostile frame from lab's guest cuts its agent off; peer works on.
        "use:lab",
        "console:hostile\\n",
        "wait-agent-cut:lab",
        "use:peer",
        &format!("clipboard-set:{AFTER}"),
        &format!("wait-clipboard:{AFTER}"),
        "console:after\\n",
        "wait-serial:PEER-ALIVE",
    ]
    .map(String::from)
    .to_vec();
    let run = GuestRun {
        mem_mib: 1024,
        vcpus: 1,
        display: Some((1024, 768)),
        disks: vec![LabDisk {
            name: "root".into(),
            source: DiskSource::HostFile(template_image()),
            read_only: true,
            id: Some("root".into()),
        }],
        app: Some("xterm".into()),
        timeout_s: 900,
        test_script: script(&base64(&png)),
        supervise: Some(steps),
        extra_partitions: 1,
        ..GuestRun::default()
    };
    let out = run_guest(&run);
    eprintln!("{}", out.summary());
    let events = out.file_text("events.log");
    eprintln!("--- supervisor events ---\n{events}");
    out.save_artifacts("services-two-partitions");
    let peer = out.file_text("serial-peer.log");
    let lab = out.file_text("serial-lab.log");
    let all = format!("{lab}\n{peer}");
    let ctx = || format!("{events}\n--- peer ---\n{peer}\n{}", out.diagnostics());
    assert!(
        all.contains(&format!("PEER-READ[{TEXT}]")),
        "text\n{}",
        ctx()
    );
    assert!(
        events.contains("nothing to paste into peer"),
        "a second paste found the buffer full\n{}",
        ctx()
    );
    assert!(
        all.contains(&format!("PEER-PNG[{}]", sha256_hex(&png))),
        "the PNG did not arrive byte-exact\n{}",
        ctx()
    );
    assert!(
        events.contains("paste from lab into peer refused: denied by rule"),
        "the denied paste\n{}",
        ctx()
    );
    assert!(
        !events.contains(&format!("pasted {} bytes", SECOND_TEXT.len())),
        "a denied paste crossed\n{}",
        ctx()
    );
    let sha = |tag: &str| {
        all.split(&format!("{tag}["))
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(str::to_string)
    };
    let src = sha("SRC-SHA").expect("the source's sha256");
    assert_eq!(sha("DST-SHA").as_deref(), Some(src.as_str()), "{}", ctx());
    assert!(all.contains("COPY-DONE[ok]"), "bulkhead-copy\n{}", ctx());
    assert!(all.contains("SOURCE-KEPT"), "a copy keeps its source");
    // Nothing overwritten: the older file keeps its name and content.
    assert!(all.contains("DST-FILE[notes (1).txt][older]"), "{}", ctx());
    assert!(
        all.contains("DST-FILE[notes (1) (1).txt][first]"),
        "{}",
        ctx()
    );
    assert!(
        events.contains("lab: agent cut off: malformed frame: bad file name"),
        "{}",
        ctx()
    );
    assert!(all.contains("OPEN-DONE[ok]"), "bulkhead-open\n{}", ctx());
    assert!(
        peer.contains("OPENED[") && !peer.contains("OPENED[0]") && peer.contains("firefox"),
        "peer's browser did not get the link\n{}",
        ctx()
    );
    assert!(all.contains("ESCAPED[0]"), "{}", ctx());
    assert!(all.contains("PEER-ALIVE"), "{}", ctx());
    let audit = out.file_text("audit.log");
    assert!(
        audit.contains("asked → allowed by the user"),
        "the file copy's decision is not audited: {audit}"
    );
}
