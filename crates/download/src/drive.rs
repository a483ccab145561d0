//! Google Drive downloads, including the confirmation step of large files.
//!
//! Drive answers a request for a file too large to virus-scan with an HTML page instead of the
//! file; the page carries a token (in a form, a link, or a `download_warning` cookie) that must be
//! sent back to get the bytes. This module finds that token, then hands the answer to the same
//! resumable, verified transfer as everything else.

use std::path::Path;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::transfer::{self, Fetched};

/// Google Drive's public download address.
pub const DRIVE_ENDPOINT: &str = "https://drive.google.com";

/// A file shared on Google Drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveFile {
    /// The file id from its sharing link.
    pub id: String,
    /// The file's name, used for the file on disk.
    pub file_name: String,
}

impl DriveFile {
    /// The PyTorch port's pretrained checkpoint (fold 1, 25 epochs).
    pub fn port_checkpoint() -> Self {
        DriveFile {
            id: "1ugB5wHFL3WMqW_c1OIPJJAZs8_RN-PCF".to_string(),
            file_name: "cnn-fold1-1602524723_25-1.00.tar".to_string(),
        }
    }
}

/// Where and how to reach Google Drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveOptions {
    /// Base URL, [`DRIVE_ENDPOINT`] unless testing against a local server; `https` unless it is
    /// a loopback address.
    pub endpoint: String,
    /// Never go online: succeed only when the file is already on disk.
    pub offline: bool,
    /// How long the server may stay silent before the transfer is given up
    /// (`READ_TIMEOUT` by default).
    pub read_timeout: std::time::Duration,
}

impl Default for DriveOptions {
    fn default() -> Self {
        DriveOptions {
            endpoint: DRIVE_ENDPOINT.to_string(),
            offline: false,
            read_timeout: transfer::READ_TIMEOUT,
        }
    }
}

/// Where the sha256 of a Drive file's first download is kept: `<file>.first-sha256`.
pub fn pin_path(dest: &Path) -> std::path::PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".first-sha256");
    dest.with_file_name(name)
}

/// Downloads a Drive file to `dest`, or verifies the copy already there.
///
/// Resumes from `<dest>.part` when an earlier run was cut (with `If-Range`, so a file changed in
/// the meantime starts over), and records the sha256 in `<dest>.sha256`. A file already in place
/// is hashed and, when it matches, nothing is fetched.
///
/// Drive publishes no checksum, so the sha256 of the first complete download is also recorded in
/// `pin_path``(dest)`, which later downloads of the same file must match (trust on first use):
/// a file replaced on Drive, or altered on its way, is moved aside and refused.
pub fn fetch_drive_file(
    file: &DriveFile,
    dest: &Path,
    options: &DriveOptions,
    progress: &dyn Progress,
) -> Result<Fetched> {
    if let Some(found) = transfer::already_present(dest)? {
        check_pin(&found, dest)?;
        return Ok(found);
    }
    if options.offline {
        return Err(Error::MissingOffline {
            what: format!("the Drive file {}", file.file_name),
            path: dest.to_path_buf(),
        });
    }

    let url = format!(
        "{}/uc?export=download&id={}",
        options.endpoint.trim_end_matches('/'),
        file.id
    );
    transfer::require_https(&url)?;
    let client = transfer::http_client(options.read_timeout, None)?;
    let resume = transfer::resume_point(dest)?;
    let response = transfer::send_get(&client, &url, resume.as_ref())?;
    let (response, url) = if is_html(&response) && response.status().is_success() {
        let cookie_token = download_warning_cookie(&response);
        let page_url = response.url().clone();
        let page = response.text().map_err(|err| Error::Offline {
            url: url.clone(),
            reason: transfer::describe_transport_error(&err),
        })?;
        let confirmed =
            confirmed_url(&page, &page_url, cookie_token.as_deref()).ok_or_else(|| {
                Error::DriveNoConfirmation {
                    url: url.clone(),
                    dest: dest.to_path_buf(),
                }
            })?;
        let response = transfer::send_get(&client, &confirmed, resume.as_ref())?;
        if is_html(&response) && response.status().is_success() {
            return Err(Error::DriveNoConfirmation {
                url: confirmed,
                dest: dest.to_path_buf(),
            });
        }
        (response, confirmed)
    } else {
        (response, url)
    };
    let fetched = transfer::receive(
        &client, response, &url, &file.id, dest, resume, None, progress,
    )
    .map_err(|err| match err {
        Error::NotFound { url, .. } => Error::DriveNotFound {
            url,
            id: file.id.clone(),
            dest: dest.to_path_buf(),
        },
        err => err,
    })?;
    check_pin(&fetched, dest)?;
    Ok(fetched)
}

/// Records the first download's sha256, or checks a later download against it.
fn check_pin(fetched: &Fetched, dest: &Path) -> Result<()> {
    let pin = pin_path(dest);
    match std::fs::read_to_string(&pin) {
        Ok(recorded) => {
            let expected = recorded
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if expected == fetched.sha256 {
                return Ok(());
            }
            let moved_to = transfer::move_aside(dest)?;
            let _ = std::fs::remove_file(transfer::sidecar_path(dest));
            Err(Error::PinMismatch {
                path: dest.to_path_buf(),
                pin,
                expected,
                actual: fetched.sha256.clone(),
                moved_to,
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let file_name = dest.file_name().unwrap_or_default().to_string_lossy();
            std::fs::write(&pin, format!("{}  {file_name}\n", fetched.sha256))
                .map_err(|err| Error::io("writing", &pin, err))
        }
        Err(err) => Err(Error::io("reading", &pin, err)),
    }
}

fn is_html(response: &reqwest::blocking::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().starts_with("text/html"))
}

/// The older Drive flow set the token in a cookie named `download_warning_<...>`.
fn download_warning_cookie(response: &reqwest::blocking::Response) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .find_map(|value| {
            let cookie = value.to_str().ok()?;
            let (name, rest) = cookie.split_once('=')?;
            if !name.trim().starts_with("download_warning") {
                return None;
            }
            Some(rest.split(';').next().unwrap_or("").trim().to_string())
        })
}

/// Builds the URL that fetches the file itself from a Drive confirmation page.
///
/// Tries, in order: the current page's `<form id="download-form">` with hidden inputs (`id`,
/// `export`, `confirm`, `uuid`), a `href` carrying `confirm=`, and the cookie token.
fn confirmed_url(
    page: &str,
    page_url: &reqwest::Url,
    cookie_token: Option<&str>,
) -> Option<String> {
    let page = page.replace("&amp;", "&");
    if let Some(form_start) = page.find("id=\"download-form\"") {
        let form_open = page[..form_start].rfind("<form").unwrap_or(form_start);
        let form_end = page[form_open..]
            .find("</form>")
            .map_or(page.len(), |end| form_open + end);
        let form = &page[form_open..form_end];
        if let Some(action) = attribute(form, "action") {
            let mut target = page_url.join(&action).ok()?;
            {
                let mut query = target.query_pairs_mut();
                for input in form.split("<input").skip(1) {
                    let is_hidden = attribute(input, "type").is_some_and(|kind| kind == "hidden");
                    if let (true, Some(name), Some(value)) = (
                        is_hidden,
                        attribute(input, "name"),
                        attribute(input, "value"),
                    ) {
                        query.append_pair(&name, &value);
                    }
                }
            }
            return Some(target.to_string());
        }
    }
    if let Some(link_start) = page.find("confirm=") {
        let href_start = page[..link_start]
            .rfind("href=\"")
            .map(|start| start + "href=\"".len())?;
        let href_end = page[href_start..].find('"').map(|end| href_start + end)?;
        return page_url
            .join(&page[href_start..href_end])
            .ok()
            .map(|url| url.to_string());
    }
    let token = cookie_token?;
    let mut target = page_url.clone();
    target.query_pairs_mut().append_pair("confirm", token);
    Some(target.to_string())
}

/// The value of `name="..."` inside a tag's text.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let pattern = format!("{name}=\"");
    let mut search_from = 0;
    while let Some(found) = tag[search_from..].find(&pattern) {
        let start = search_from + found;
        // Skip matches that are the tail of a longer attribute name, e.g. `data-name=`.
        let preceded_by_space = start == 0 || tag.as_bytes()[start - 1].is_ascii_whitespace();
        let value_start = start + pattern.len();
        if preceded_by_space {
            let value_end = tag[value_start..].find('"')? + value_start;
            return Some(tag[value_start..value_end].to_string());
        }
        search_from = value_start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> reqwest::Url {
        reqwest::Url::parse("https://drive.google.com/uc?export=download&id=ABC")
            .expect("literal URL")
    }

    #[test]
    fn form_confirmation_page_gives_usercontent_url() {
        let page = r#"<html><form id="download-form" action="https://drive.usercontent.google.com/download" method="get">
            <input type="submit" id="uc-download-link" value="Download anyway"/>
            <input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">
            <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form></html>"#;
        let url = confirmed_url(page, &base(), None).expect("form found");
        assert_eq!(url, "https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t&uuid=u-1");
    }

    #[test]
    fn link_confirmation_page_gives_link() {
        let page = r#"<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_9&amp;id=ABC">Download</a>"#;
        let url = confirmed_url(page, &base(), None).expect("link found");
        assert_eq!(
            url,
            "https://drive.google.com/uc?export=download&confirm=Xy_9&id=ABC"
        );
    }

    #[test]
    fn cookie_token_is_the_last_resort() {
        let url = confirmed_url("<html>quota</html>", &base(), Some("tok")).expect("cookie");
        assert_eq!(
            url,
            "https://drive.google.com/uc?export=download&id=ABC&confirm=tok"
        );
        assert_eq!(confirmed_url("<html>quota</html>", &base(), None), None);
    }
}
