//! Open-in, target side: the host asks this partition's browser to open a URL.

use std::path::Path;
use std::process::{Command, Stdio};

/// Starts `browser URL` detached from the agent (its own session, no stdio; the shell in
/// between exits at once, so the browser is reparented and nothing is left to reap).
/// The URL is an argument, never part of a command line.
pub fn open_url(browser: &str, url: &str, display: &str, home: &Path) -> Result<(), String> {
    bulkhead_agent_proto::check_url(url).map_err(|e| e.to_string())?;
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            r#"command -v "$0" > /dev/null || exit 127; setsid "$0" "$1" < /dev/null > /dev/null 2>&1 &"#,
            browser,
            url,
        ])
        .env("DISPLAY", display)
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("starting /bin/sh: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(127) => Err(format!("this partition has no browser `{browser}`")),
        _ => Err(format!("starting `{browser}` failed ({status})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_reaches_the_browser_as_one_argument_and_a_missing_browser_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let browser = dir.path().join("browser");
        std::fs::write(
            &browser,
            format!("#!/bin/sh\nprintf '%s|' \"$@\" > {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            &browser,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let url = "https://example.org/a?b=$(touch%20x)&c=;d";
        open_url(browser.to_str().unwrap(), url, ":0", dir.path()).unwrap();
        for _ in 0..200 {
            if out.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{url}|"));
        let err = open_url("no-such-browser-here", url, ":0", dir.path()).unwrap_err();
        assert!(err.contains("no browser"), "{err}");
        assert!(open_url("true", "file:///etc/passwd", ":0", dir.path()).is_err());
    }
}
