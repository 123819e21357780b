//! `bulkhead export` and `bulkhead import` through the real binary, in a private HOME:
//! a partition with its private disk and the rules naming it travels byte-identical under
//! a new name; a name clash, a wrong passphrase, a changed byte or a truncated bundle is
//! refused with one line and leaves the policy and the data directory as they were.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

// Shared with the app's bundle tests; this binary makes its own temporary home.
#[allow(dead_code)]
#[path = "support/bundle_home.rs"]
mod bundle_home;

struct Home {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Home {
    /// A HOME with the shipped policy as the user's own, a sparse private disk for `mail`
    /// and two passphrase files.
    fn new() -> Home {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        bundle_home::populate(&root);
        fs::write(root.join("pass"), "a long passphrase\n").unwrap();
        fs::write(root.join("wrong"), "not it\n").unwrap();
        Home { _tmp: tmp, root }
    }

    fn policy(&self) -> PathBuf {
        bundle_home::policy(&self.root)
    }

    fn disk(&self, name: &str) -> PathBuf {
        bundle_home::disk(&self.root, name)
    }

    fn bulkhead(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(args)
            .env("HOME", &self.root)
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_DATA_HOME", self.root.join("data"))
            .env_remove("BULKHEAD_POLICY_DIR")
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    /// Everything import could have touched, for "nothing changed" checks.
    fn state(&self) -> Vec<(PathBuf, Vec<u8>)> {
        bundle_home::state(&self.root)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn export_mail(home: &Home) -> PathBuf {
    let out = home.bulkhead(&[
        "export",
        "mail",
        "mail.bulkhead",
        "--passphrase-file",
        "pass",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    home.root.join("mail.bulkhead")
}

#[test]
fn an_exported_partition_imports_under_a_new_name_with_its_disk_byte_identical_and_its_rules_renamed(
) {
    let home = Home::new();
    let bundle = export_mail(&home);
    let size = fs::metadata(&bundle).unwrap().len();
    assert!(size < 2 << 20, "a sparse 256 MiB disk packs small: {size}");

    let out = home.bulkhead(&[
        "import",
        "mail.bulkhead",
        "--name",
        "mail2",
        "--passphrase-file",
        "pass",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(home.disk("mail2")).unwrap(),
        fs::read(home.disk("mail")).unwrap()
    );
    let partitions = fs::read_to_string(home.policy().join("partitions.toml")).unwrap();
    assert!(partitions.contains("[partition.mail2]"), "{partitions}");
    assert!(partitions.contains("[partition.mail2.network]"));
    let rules =
        fs::read_to_string(home.policy().join("policy.d/45-imported-mail2.policy")).unwrap();
    assert!(
        rules.contains("bulkhead.OpenURL * mail2 @default allow target=@dispvm:browser"),
        "{rules}"
    );
    let spec = isolation_policy::Policy::load(&home.policy()).unwrap().0;
    let (a, b) = (spec.spec("mail").unwrap(), spec.spec("mail2").unwrap());
    assert_eq!(
        (a.memory_mib, a.app.clone(), a.template.clone()),
        (b.memory_mib, b.app.clone(), b.template.clone())
    );
    assert!(
        !home
            .root
            .join("data/bulkhead/partitions")
            .read_dir()
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".import-")),
        "staging left behind"
    );
}

#[test]
fn import_refuses_a_name_clash_a_wrong_passphrase_a_changed_byte_and_a_truncation_and_changes_nothing(
) {
    let home = Home::new();
    let bundle = export_mail(&home);
    let good = fs::read(&bundle).unwrap();
    let before = home.state();
    let import = |extra: &[&str]| {
        let mut args = vec!["import", "mail.bulkhead", "--passphrase-file"];
        args.extend_from_slice(extra);
        home.bulkhead(&args)
    };

    let clash = import(&["pass"]);
    assert!(!clash.status.success());
    assert!(stderr(&clash).contains("--name"), "{}", stderr(&clash));
    assert_eq!(home.state(), before, "after the clash");

    let wrong = import(&["wrong", "--name", "other"]);
    assert!(
        stderr(&wrong).contains("wrong passphrase"),
        "{}",
        stderr(&wrong)
    );
    assert_eq!(home.state(), before, "after the wrong passphrase");

    let mut changed = good.clone();
    let at = good.len() / 2;
    changed[at] ^= 1;
    fs::write(&bundle, &changed).unwrap();
    let tampered = import(&["pass", "--name", "other"]);
    assert!(!tampered.status.success());
    assert!(
        stderr(&tampered).contains("damaged"),
        "{}",
        stderr(&tampered)
    );
    assert_eq!(stderr(&tampered).trim().lines().count(), 1);
    assert_eq!(home.state(), before, "after the changed byte");

    fs::write(&bundle, &good[..good.len() - 100]).unwrap();
    let truncated = import(&["pass", "--name", "other"]);
    assert!(!truncated.status.success());
    assert!(
        stderr(&truncated).contains("damaged"),
        "{}",
        stderr(&truncated)
    );
    assert_eq!(home.state(), before, "after the truncation");

    // The same file, whole again, imports: the refusals were the checks'.
    fs::write(&bundle, &good).unwrap();
    assert!(import(&["pass", "--name", "other"]).status.success());
}

#[test]
fn export_refuses_a_running_partition_an_unknown_one_and_an_existing_file() {
    use std::os::unix::process::CommandExt;
    let home = Home::new();
    let unknown = home.bulkhead(&[
        "export",
        "nosuch",
        "x.bulkhead",
        "--passphrase-file",
        "pass",
    ]);
    assert!(
        stderr(&unknown).contains("no partition `nosuch`"),
        "{}",
        stderr(&unknown)
    );

    fs::write(home.root.join("taken.bulkhead"), "keep me").unwrap();
    let taken = home.bulkhead(&[
        "export",
        "mail",
        "taken.bulkhead",
        "--passphrase-file",
        "pass",
    ]);
    assert!(stderr(&taken).contains("exists"), "{}", stderr(&taken));
    assert_eq!(
        fs::read(home.root.join("taken.bulkhead")).unwrap(),
        b"keep me"
    );

    // A process titled as partition `work` stands in for a running one.
    let mut running = Command::new("sleep")
        .arg0("bulkhead-vmm: work")
        .arg("30")
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let cmdline = format!("/proc/{}/cmdline", running.id());
    while fs::read(&cmdline).is_ok_and(|c| c.is_empty()) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let busy = home.bulkhead(&["export", "work", "w.bulkhead", "--passphrase-file", "pass"]);
    running.kill().unwrap();
    running.wait().unwrap();
    assert!(stderr(&busy).contains("is running"), "{}", stderr(&busy));
    assert!(!home.root.join("w.bulkhead").exists());
    assert!(!home.root.join("w.bulkhead.partial").exists());
}
