//! The output folder as a shared place: the lock that fold jobs of one run take around every
//! read-modify-write of its shared files, the marker saying which program wrote a folder, and
//! moving an earlier run aside instead of deleting it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// File in the output folder (and each fold folder) saying which program made it;
/// [`crate::RunOptions::restart`] only moves aside folders that carry it or a checkpoint state.
pub(crate) const MARKER_FILE: &str = ".made-by";

/// The lock file in the output folder. Never removed: removing a lock file others may hold
/// open would let two holders in at once.
pub(crate) const LOCK_FILE: &str = ".lock";

/// Prefix of the folders an earlier run is moved into: `.previous-<UTC time>`.
pub(crate) const PREVIOUS_PREFIX: &str = ".previous-";

/// An exclusive advisory lock on the output folder, held until dropped. Every process of a run
/// (`--fold K` jobs of a scheduler's array included) takes it around reading and rewriting
/// `config.json` and the history, so no two of them interleave.
#[derive(Debug)]
pub(crate) struct OutputLock {
    file: File,
}

/// Waits for and takes the lock of `out` (created when missing).
pub(crate) fn lock_output(out: &Path) -> Result<OutputLock> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let path = out.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(Error::io(&path))?;
    fs4::FileExt::lock(&file).map_err(Error::io(&path))?;
    Ok(OutputLock { file })
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first only makes it prompt.
        let _ = fs4::FileExt::unlock(&self.file);
    }
}

/// Writes the marker into `folder` unless it is there.
pub(crate) fn write_marker(folder: &Path) -> Result<()> {
    let path = folder.join(MARKER_FILE);
    if path.exists() {
        return Ok(());
    }
    let text = format!(
        "dexpression-train {}: training outputs (config.json, history, fold checkpoints)\n",
        env!("CARGO_PKG_VERSION")
    );
    dexpression_fsio::write_bytes(&path, text.as_bytes())?;
    Ok(())
}

/// Moves `paths` (inside `out`) into a new `<out>/.previous-<UTC time>/`, keeping their names;
/// returns that folder, or `None` when there was nothing to move. Refuses, with the path and
/// the reason, anything outside `out`.
pub(crate) fn move_aside(out: &Path, paths: &[PathBuf]) -> Result<Option<PathBuf>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let stamp = utc_stamp(std::time::SystemTime::now());
    let mut aside = out.join(format!("{PREVIOUS_PREFIX}{stamp}"));
    let mut attempt = 1;
    while aside.exists() {
        attempt += 1;
        aside = out.join(format!("{PREVIOUS_PREFIX}{stamp}-{attempt}"));
    }
    std::fs::create_dir(&aside).map_err(Error::io(&aside))?;
    for path in paths {
        let name = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if parent == out => name,
            _ => {
                return Err(Error::Data(format!(
                    "{}: not directly inside the output folder {}, so not moved aside",
                    path.display(),
                    out.display()
                )))
            }
        };
        dexpression_fsio::rename_durable(path, &aside.join(name))?;
    }
    Ok(Some(aside))
}

/// `20261130T091502Z` for a time (UTC, whole seconds).
fn utc_stamp(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_827_696)),
            "20000229T123456Z"
        );
        // 2026-11-30 09:15:02 UTC.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_796_030_102)),
            "20261130T091502Z"
        );
    }

    #[test]
    fn moving_aside_keeps_everything_and_refuses_outside_paths() {
        let folder = tempfile::tempdir().unwrap();
        let out = folder.path().join("out");
        std::fs::create_dir_all(out.join("fold1")).unwrap();
        std::fs::write(out.join("fold1/best.json"), "{}").unwrap();
        std::fs::write(out.join("history.csv"), "fold\n").unwrap();
        let aside = move_aside(&out, &[out.join("fold1"), out.join("history.csv")])
            .unwrap()
            .unwrap();
        assert!(aside.starts_with(&out));
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(PREVIOUS_PREFIX));
        assert_eq!(
            std::fs::read_to_string(aside.join("fold1/best.json")).unwrap(),
            "{}"
        );
        assert!(aside.join("history.csv").is_file());
        assert!(!out.join("fold1").exists());
        // A second move in the same second gets its own folder.
        std::fs::write(out.join("history.csv"), "fold\n").unwrap();
        let again = move_aside(&out, &[out.join("history.csv")])
            .unwrap()
            .unwrap();
        assert_ne!(again, aside);

        let outside = folder.path().join("elsewhere.csv");
        std::fs::write(&outside, "x").unwrap();
        let error = move_aside(&out, std::slice::from_ref(&outside)).unwrap_err();
        assert!(error.to_string().contains("not directly inside"), "{error}");
        assert!(outside.is_file());
        assert_eq!(move_aside(&out, &[]).unwrap(), None);
    }
}
