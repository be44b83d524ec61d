//! `tollgate report --format pdf`: the signed HTML report printed to PDF by a headless
//! Chromium, found on `PATH` (or named by `TOLLGATE_CHROMIUM`). The PDF is for reading and
//! printing; the evidence is the signed HTML it was printed from, which is kept beside it so
//! `tollgate report verify` can check it.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the Chromium (or Chrome) executable to print with.
pub const CHROMIUM_ENV: &str = "TOLLGATE_CHROMIUM";

/// Executable names tried on `PATH`, in order.
const CANDIDATES: [&str; 5] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
];

/// How long printing may take: a thousand-node report is thousands of pages.
const PRINT_TIMEOUT: Duration = Duration::from_secs(600);

/// What to tell someone without a Chromium.
const HOW_TO_INSTALL: &str = "printing a PDF needs a headless Chromium or Chrome: install one \
    (Debian, Ubuntu: `sudo apt-get install chromium`; Fedora: `sudo dnf install chromium`; \
    macOS: install Google Chrome) or point TOLLGATE_CHROMIUM at its executable; or write \
    --format html and print that file from any browser";

/// The Chromium to print with: `TOLLGATE_CHROMIUM` when set, else the first candidate on
/// `PATH`.
pub fn find_chromium() -> anyhow::Result<PathBuf> {
    if let Some(named) = std::env::var_os(CHROMIUM_ENV).filter(|named| !named.is_empty()) {
        let named = PathBuf::from(named);
        if is_executable(&named) {
            return Ok(named);
        }
        bail!(
            "{CHROMIUM_ENV}={} is not an executable file; {HOW_TO_INSTALL}",
            named.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in CANDIDATES {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no Chromium found on PATH (looked for {}); {HOW_TO_INSTALL}",
        CANDIDATES.join(", ")
    )
}

/// Whether this process runs as root (`/proc/self` belongs to the process's user; on a
/// system without `/proc`, assumed not).
fn runs_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|metadata| metadata.uid() == 0)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Prints the HTML file `html` to the PDF file `pdf` with `chromium`, through `PDF.part`, so
/// a failed or interrupted print never leaves a partial PDF behind.
pub async fn print(chromium: &Path, html: &Path, pdf: &Path) -> anyhow::Result<u64> {
    let html = std::fs::canonicalize(html)
        .with_context(|| format!("finding the HTML report {}", html.display()))?;
    let mut part = pdf.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    // A profile of its own: a Chromium the user has open keeps its profile locked.
    let profile = tempfile::Builder::new()
        .prefix("tollgate-print-")
        .tempdir()
        .context("making a temporary Chromium profile directory")?;
    let mut command = tokio::process::Command::new(chromium);
    command
        .arg("--headless")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--disable-extensions")
        .arg("--no-pdf-header-footer")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--print-to-pdf={}", part.display()));
    // Chromium refuses to start its sandbox as root.
    if runs_as_root() {
        command.arg("--no-sandbox");
    }
    command
        .arg(format!("file://{}", html.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}; {HOW_TO_INSTALL}", chromium.display()))?;
    let output = match tokio::time::timeout(PRINT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.with_context(|| format!("waiting for {}", chromium.display()))?,
        Err(_) => {
            let _ = std::fs::remove_file(&part);
            bail!(
                "{} did not finish printing within {}s; print a smaller report (--customer \
                 LABEL=VALUE) or open the HTML report in a browser and print it from there",
                chromium.display(),
                PRINT_TIMEOUT.as_secs()
            );
        }
    };
    let printed = std::fs::metadata(&part)
        .map(|metadata| metadata.len())
        .unwrap_or(0);
    if !output.status.success() || printed == 0 {
        let _ = std::fs::remove_file(&part);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "{} could not print {} ({}); its last messages:\n{}",
            chromium.display(),
            html.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    std::fs::rename(&part, pdf)
        .with_context(|| format!("renaming {} to {}", part.display(), pdf.display()))?;
    Ok(printed)
}
