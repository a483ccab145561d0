//! Recognising a source's layout and listing the frames to crop, with their labels.
//!
//! Scanning reads only directory listings and the tiny label files; images and landmark files
//! are read later, in parallel, by [`crate::prepare`].

use crate::parse::{parse_ck_stem, parse_emotion_label, ParseError};
use crate::{Error, Expression, Layout, PrepareOptions, Result, Selection, SkipKind, Skipped};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The names the official CK+ release gives its folders and archives, spelled here only: the
/// dataset crate reads them, the synthetic CK+ writes them, the download crate imports them.
pub mod ckplus_release {
    /// The folder of PNG frames, `<subject>/<sequence>/<frame>.png`.
    pub const IMAGES: &str = "cohn-kanade-images";
    /// The folder of emotion labels, `<subject>/<sequence>/<frame>_emotion.txt`.
    pub const EMOTION: &str = "Emotion";
    /// The folder of facial landmarks, `<subject>/<sequence>/<frame>_landmarks.txt`.
    pub const LANDMARKS: &str = "Landmarks";
    /// The folder of FACS action-unit codes.
    pub const FACS: &str = "FACS";
    /// Every folder of the release, in that order.
    pub const PARTS: [&str; 4] = [IMAGES, EMOTION, LANDMARKS, FACS];
    /// The image archive of the official release.
    pub const IMAGES_ZIP: &str = "extended-cohn-kanade-images.zip";
    /// The emotion label archive.
    pub const EMOTION_ZIP: &str = "Emotion_labels.zip";
    /// The landmark archive (optional: without it faces fall back to the whole image).
    pub const LANDMARKS_ZIP: &str = "Landmarks.zip";
}

/// What the layout detection looked for, for the error when nothing matches.
pub(crate) const LOOKED_FOR: &str = "the official CK+ release (folders `cohn-kanade-images/` and \
`Emotion/`, optionally `Landmarks/`, at most three levels down; or the archives \
`extended-cohn-kanade-images.zip` and `Emotion_labels.zip`), or one folder per class \
(`<root>/<class>/<image>` with PNG, JPEG or TIFF images, any class names), or a FER2013 CSV \
file (`fer2013.csv`)";

/// One image to crop, with everything known about it before decoding.
#[derive(Debug, Clone)]
pub(crate) struct FrameJob {
    pub image: PathBuf,
    pub landmarks: Option<PathBuf>,
    pub label: usize,
    pub subject: String,
    pub sequence: String,
    pub frame: u32,
    /// The layout holds ready-made face crops (folder-per-class): no landmarks exist, and a
    /// square or small image is used as it is.
    pub precropped: bool,
}

/// The result of scanning a source.
#[derive(Debug)]
pub(crate) struct Scan {
    pub layout: Layout,
    /// The folder the relative paths below start from.
    pub root: PathBuf,
    /// Class names in label order.
    pub class_names: Vec<String>,
    pub jobs: Vec<FrameJob>,
    pub skipped: Vec<Skipped>,
    pub n_ignored_files: usize,
    /// One line per input file (relative path, size, and for labels the content): hashed
    /// into the cache key.
    pub listing: Vec<String>,
}

/// Detects the layout of an extracted source folder and lists its frames. Zip archives are
/// handled by the caller, which extracts them and calls this on the result.
pub(crate) fn scan(root: &Path, options: &PrepareOptions) -> Result<Scan> {
    if let Some(official) = find_official(root)? {
        return scan_official(root, &official, options);
    }
    if let Some(scan) = scan_folder_per_class(root, options)? {
        return Ok(scan);
    }
    Err(Error::UnknownLayout {
        root: root.to_path_buf(),
        looked_for: LOOKED_FOR.to_string(),
    })
}

/// The three folders of the official release.
#[derive(Debug)]
struct OfficialDirs {
    images: PathBuf,
    emotion: PathBuf,
    landmarks: Option<PathBuf>,
}

fn find_official(root: &Path) -> Result<Option<OfficialDirs>> {
    let image_dirs = find_subject_dirs(root, ckplus_release::IMAGES);
    let emotion_dirs = find_subject_dirs(root, ckplus_release::EMOTION);
    let landmark_dirs = find_subject_dirs(root, ckplus_release::LANDMARKS);
    // A root may hold several copies (or a copy and a stray folder): each labels or landmarks
    // folder belongs to the images folder it shares the longest path with, so one copy's
    // images are never paired with another copy's labels.
    let owned_by = |candidates: &[PathBuf], images: &Path| -> Option<PathBuf> {
        candidates
            .iter()
            .filter(|candidate| {
                let closest = image_dirs
                    .iter()
                    .max_by_key(|other| shared_depth(other, candidate))
                    .map(|other| shared_depth(other, candidate));
                closest == Some(shared_depth(images, candidate))
            })
            .max_by_key(|candidate| shared_depth(images, candidate))
            .cloned()
    };
    for images in &image_dirs {
        if let Some(emotion) = owned_by(&emotion_dirs, images) {
            return Ok(Some(OfficialDirs {
                images: images.clone(),
                emotion,
                landmarks: owned_by(&landmark_dirs, images),
            }));
        }
    }
    Ok(None)
}

/// How many leading path components two paths share.
fn shared_depth(a: &Path, b: &Path) -> usize {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Every folder called `name` (case-insensitive) at most four levels below `root` that holds
/// subject folders (`S005`, ...), nearest first. Searching by content copes with the archives'
/// habit of unzipping nested (`Emotion_labels/Emotion/`, `Landmarks/Landmarks/`). Subject
/// folders and matches are not searched further (they hold sequences, never datasets) and
/// unreadable folders are passed over.
fn find_subject_dirs(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![root.to_path_buf()];
    for _depth in 0..4 {
        let mut next_level = Vec::new();
        for dir in &level {
            for child in sorted_entries(dir).unwrap_or_default() {
                if !child.is_dir() {
                    continue;
                }
                let child_name = file_name(&child);
                if is_subject_name(&child_name) {
                    continue;
                }
                if child_name.eq_ignore_ascii_case(name) && has_subject_dirs(&child) {
                    found.push(child);
                } else {
                    next_level.push(child);
                }
            }
        }
        level = next_level;
    }
    found
}

fn has_subject_dirs(dir: &Path) -> bool {
    sorted_entries(dir)
        .unwrap_or_default()
        .iter()
        .any(|entry| entry.is_dir() && is_subject_name(&file_name(entry)))
}

fn is_subject_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(['S', 's'])
        && name[1..].bytes().all(|byte| byte.is_ascii_digit())
}

fn scan_official(root: &Path, dirs: &OfficialDirs, options: &PrepareOptions) -> Result<Scan> {
    let mut scan = Scan {
        layout: Layout::Official,
        root: root.to_path_buf(),
        class_names: crate::class_names(options.neutral),
        jobs: Vec::new(),
        skipped: Vec::new(),
        n_ignored_files: 0,
        listing: Vec::new(),
    };
    // Every frame of every sequence: (subject, sequence folder) → frames sorted by number.
    let mut sequences: BTreeMap<(String, String), Vec<(u32, PathBuf)>> = BTreeMap::new();
    for subject_dir in sorted_entries(&dirs.images)? {
        let subject = file_name(&subject_dir);
        if !subject_dir.is_dir() {
            scan.n_ignored_files += 1;
            continue;
        }
        for sequence_dir in sorted_entries(&subject_dir)? {
            if !sequence_dir.is_dir() {
                scan.n_ignored_files += 1;
                continue;
            }
            let mut frames = Vec::new();
            for file in sorted_entries(&sequence_dir)? {
                let stem = parse_ck_stem(&file_stem(&file));
                match stem {
                    Some(stem) if is_image_file(&file) => {
                        scan.listing
                            .push(listing_line("images", &dirs.images, &file));
                        frames.push((stem.frame, file));
                    }
                    _ => scan.n_ignored_files += 1,
                }
            }
            frames.sort();
            sequences.insert((subject.clone(), file_name(&sequence_dir)), frames);
        }
    }

    for subject_dir in sorted_entries(&dirs.emotion)? {
        if !subject_dir.is_dir() {
            scan.n_ignored_files += 1;
            continue;
        }
        let subject = file_name(&subject_dir);
        for sequence_dir in sorted_entries(&subject_dir)? {
            if !sequence_dir.is_dir() {
                scan.n_ignored_files += 1;
                continue;
            }
            let sequence_name = file_name(&sequence_dir);
            let label_files: Vec<PathBuf> = sorted_entries(&sequence_dir)?
                .into_iter()
                .filter(|file| {
                    let is_label = file.extension().is_some_and(|ext| ext == "txt");
                    if !is_label {
                        scan.n_ignored_files += 1;
                    }
                    is_label
                })
                .collect();
            // One label per sequence; a second file (never seen in the release) is ignored.
            let Some(label_file) = label_files.first() else {
                continue;
            };
            scan.n_ignored_files += label_files.len() - 1;
            let key = (subject.clone(), sequence_name.clone());
            let frames = sequences.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            add_labeled_sequence(&mut scan, dirs, label_file, &key, frames, options)?;
        }
    }
    scan.listing.sort();
    Ok(scan)
}

fn add_labeled_sequence(
    scan: &mut Scan,
    dirs: &OfficialDirs,
    label_file: &Path,
    (subject, sequence_name): &(String, String),
    frames: &[(u32, PathBuf)],
    options: &PrepareOptions,
) -> Result<()> {
    let text = match fs::read(label_file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => {
            let reason = format!("cannot read: {error}");
            return skip(scan, options, label_file, SkipKind::UnreadableLabel, reason);
        }
    };
    scan.listing.push(format!(
        "emotion/{}\tlabel\t{}",
        relative(&dirs.emotion, label_file),
        text.trim()
    ));
    let expression = match parse_emotion_label(&text) {
        Ok(expression) => expression,
        Err(error @ ParseError::LabelOutOfRange(_)) => {
            return skip(
                scan,
                options,
                label_file,
                SkipKind::LabelOutOfRange,
                error.to_string(),
            );
        }
        Err(error) => {
            return skip(
                scan,
                options,
                label_file,
                SkipKind::UnreadableLabel,
                error.to_string(),
            );
        }
    };
    if expression == Expression::Neutral && !options.neutral {
        let reason = "label 0 (neutral) is only used with the neutral option".to_string();
        return skip(scan, options, label_file, SkipKind::LabelOutOfRange, reason);
    }
    // The label sits at the peak frame; frames after it (never seen in the release) are not
    // part of the expression.
    let peak_frame = parse_ck_stem(&file_stem(label_file)).map(|stem| stem.frame);
    let frames: Vec<&(u32, PathBuf)> = match peak_frame {
        Some(peak) if frames.iter().any(|(frame, _)| *frame <= peak) => {
            frames.iter().filter(|(frame, _)| *frame <= peak).collect()
        }
        _ => frames.iter().collect(),
    };
    if frames.is_empty() {
        let reason = format!(
            "no images for sequence {subject}/{sequence_name} in {}",
            dirs.images.display()
        );
        return skip(
            scan,
            options,
            label_file,
            SkipKind::LabelWithoutImages,
            reason,
        );
    }
    let with_neutral = options.neutral && expression != Expression::Neutral && frames.len() >= 2;
    // The neutral frame never also carries the expression label.
    let expressive = if with_neutral {
        &frames[1..]
    } else {
        &frames[..]
    };
    let selected = match options.selection {
        Selection::Peak(n_frames) => &expressive[expressive.len().saturating_sub(n_frames)..],
        Selection::All => expressive,
    };
    let sequence = format!("{subject}_{sequence_name}");
    let mut add = |(frame, image): &(u32, PathBuf), label: Expression| {
        let landmarks = dirs.landmarks.as_ref().map(|landmarks_dir| {
            landmarks_dir
                .join(subject)
                .join(sequence_name)
                .join(format!("{}_landmarks.txt", file_stem(image)))
        });
        let landmarks = landmarks.filter(|path| {
            let exists = path.is_file();
            if let (true, Some(landmarks_dir)) = (exists, &dirs.landmarks) {
                scan.listing
                    .push(listing_line("landmarks", landmarks_dir, path));
            }
            exists
        });
        scan.jobs.push(FrameJob {
            image: image.clone(),
            landmarks,
            label: label.index(),
            subject: subject.clone(),
            sequence: sequence.clone(),
            frame: *frame,
            precropped: false,
        });
    };
    if with_neutral {
        add(frames[0], Expression::Neutral);
    }
    for frame in selected {
        add(frame, expression);
    }
    Ok(())
}

fn scan_folder_per_class(root: &Path, options: &PrepareOptions) -> Result<Option<Scan>> {
    let mut scan = Scan {
        layout: Layout::FolderPerClass,
        root: root.to_path_buf(),
        class_names: Vec::new(),
        jobs: Vec::new(),
        skipped: Vec::new(),
        n_ignored_files: 0,
        listing: Vec::new(),
    };
    let subject_pattern = match &options.subject_pattern {
        Some(pattern) => Some(SubjectPattern::new(pattern)?),
        None => None,
    };
    let mut class_dirs: Vec<(PathBuf, String, Vec<PathBuf>)> = Vec::new();
    let mut empty_dirs = Vec::new();
    for class_dir in sorted_entries(root)? {
        let class_name = file_name(&class_dir);
        if !class_dir.is_dir() || class_name.starts_with('.') {
            scan.n_ignored_files += 1;
            continue;
        }
        let images: Vec<PathBuf> = sorted_entries(&class_dir)?
            .into_iter()
            .filter(|file| {
                let is_image = file.is_file() && is_image_file(file);
                if !is_image {
                    scan.n_ignored_files += 1;
                }
                is_image
            })
            .collect();
        if images.is_empty() {
            empty_dirs.push(class_dir);
        } else {
            class_dirs.push((class_dir, class_name, images));
        }
    }
    if class_dirs.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = class_dirs.iter().map(|(_, name, _)| name.clone()).collect();
    let (class_names, class_of) = crate::classes::order_classes(root, &names)?;
    scan.class_names = class_names;
    for ((class_dir, class_name, images), label) in class_dirs.into_iter().zip(class_of) {
        let Some(label) = label else {
            let reason = format!(
                "class folder `{class_name}` is not listed in {} ({} images left out)",
                crate::classes::CLASSES_FILE,
                images.len()
            );
            skip(
                &mut scan,
                options,
                &class_dir,
                SkipKind::UnknownClass,
                reason,
            )?;
            continue;
        };
        add_class_folder(
            &mut scan,
            &class_name,
            label,
            images,
            subject_pattern.as_ref(),
            options,
        )?;
    }
    for dir in empty_dirs {
        let reason = "class folder holds no PNG, JPEG or TIFF image; it is not a class".to_string();
        skip(&mut scan, options, &dir, SkipKind::EmptyClass, reason)?;
    }
    scan.listing.sort();
    Ok(Some(scan))
}

/// `--subject-pattern`: a regular expression over file stems whose first capture group (else
/// whole match) names the person.
struct SubjectPattern {
    regex: regex::Regex,
}

impl SubjectPattern {
    fn new(pattern: &str) -> Result<Self> {
        let regex = regex::Regex::new(pattern).map_err(|error| Error::InvalidOption {
            name: "subject-pattern",
            value: format!("{pattern} ({error})"),
            expected: "a regular expression over file stems, e.g. `^([A-Z]{2})\\.` for JAFFE",
        })?;
        Ok(SubjectPattern { regex })
    }

    fn subject(&self, stem: &str) -> Option<String> {
        let found = self.regex.captures(stem)?;
        let subject = found.get(1).or_else(|| found.get(0))?.as_str();
        (!subject.is_empty()).then(|| subject.to_string())
    }
}

/// Files named like CK+ frames are grouped into sequences and the frame selection applies
/// (the "CK+48" copy already holds only the last 3 frames, so `Peak(3)` keeps them all); other
/// files are each their own subject, named after class folder and stem so that equal stems in
/// two class folders stay apart. With a subject pattern, every file takes its subject from its
/// name and is a sequence of its own.
fn add_class_folder(
    scan: &mut Scan,
    class_name: &str,
    label: usize,
    images: Vec<PathBuf>,
    subject_pattern: Option<&SubjectPattern>,
    options: &PrepareOptions,
) -> Result<()> {
    let mut sequences: BTreeMap<String, Vec<(u32, PathBuf, String)>> = BTreeMap::new();
    for image in images {
        scan.listing
            .push(listing_line("classes", &scan.root, &image));
        let stem = file_stem(&image);
        let id = format!("{class_name}/{stem}");
        if let Some(pattern) = subject_pattern {
            let Some(subject) = pattern.subject(&stem) else {
                let reason = format!(
                    "the subject pattern `{}` does not match the name `{stem}`",
                    pattern.regex.as_str()
                );
                skip(scan, options, &image, SkipKind::NoSubject, reason)?;
                continue;
            };
            scan.jobs.push(FrameJob {
                image,
                landmarks: None,
                label,
                subject,
                sequence: id,
                frame: 0,
                precropped: true,
            });
            continue;
        }
        match parse_ck_stem(&stem) {
            Some(ck) => sequences
                .entry(ck.sequence)
                .or_default()
                .push((ck.frame, image, ck.subject)),
            None => {
                scan.jobs.push(FrameJob {
                    image,
                    landmarks: None,
                    label,
                    subject: id.clone(),
                    sequence: id,
                    frame: 0,
                    precropped: true,
                });
            }
        }
    }
    for (sequence, mut frames) in sequences {
        frames.sort();
        let selected = match options.selection {
            Selection::Peak(n_frames) => &frames[frames.len().saturating_sub(n_frames)..],
            Selection::All => &frames[..],
        };
        for (frame, image, subject) in selected {
            scan.jobs.push(FrameJob {
                image: image.clone(),
                landmarks: None,
                label,
                subject: subject.clone(),
                sequence: sequence.clone(),
                frame: *frame,
                precropped: true,
            });
        }
    }
    Ok(())
}

/// Records a skipped file, or in strict mode turns it into the error.
fn skip(
    scan: &mut Scan,
    options: &PrepareOptions,
    path: &Path,
    kind: SkipKind,
    reason: String,
) -> Result<()> {
    if options.strict {
        return Err(Error::Strict {
            path: path.to_path_buf(),
            reason: format!("{kind}: {reason}"),
        });
    }
    scan.skipped.push(Skipped {
        path: path.to_path_buf(),
        kind,
        reason,
    });
    Ok(())
}

/// A folder's entries sorted by name, so every run sees the same order.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let reader = fs::read_dir(dir).map_err(|error| Error::io(dir, error))?;
    let mut entries = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|error| Error::io(dir, error))?;
        entries.push(entry.path());
    }
    entries.sort();
    Ok(entries)
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_image_file(path: &Path) -> bool {
    let name = file_name(path);
    if name.starts_with('.') {
        return false; // macOS resource forks (`._S005_001_00000001.png`) and .DS_Store.
    }
    path.extension()
        .map(|ext| ext.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|ext| matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "tif" | "tiff"))
}

pub(crate) fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// `tree/relative/path<TAB>size`, relative to the tree's own folder so that where the tree
/// sits (nested archives, moved datasets) does not change the cache key.
fn listing_line(tree: &str, tree_dir: &Path, path: &Path) -> String {
    let size = fs::metadata(path).map_or(0, |meta| meta.len());
    format!("{tree}/{}\t{size}", relative(tree_dir, path))
}

#[cfg(test)]
mod property_tests {
    //! Any folder tree, however odd, is recognised or refused with an error: never a panic, and
    //! what is listed lies inside the source with a label of a known class.

    use super::*;
    use proptest::prelude::*;

    /// Names that steer the layout detection, and names that trip it.
    fn entry_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("cohn-kanade-images".to_string()),
            Just("Emotion".to_string()),
            Just("Landmarks".to_string()),
            Just("S005".to_string()),
            Just("s".to_string()),
            Just("S".to_string()),
            Just("001".to_string()),
            Just("happy".to_string()),
            Just("neutral".to_string()),
            Just("Fear".to_string()),
            Just("S005_001_00000001.png".to_string()),
            Just("S005_001_00000002_emotion.txt".to_string()),
            Just("S005_001_00000002_landmarks.txt".to_string()),
            Just("._S005_001_00000001.png".to_string()),
            Just("x.jpg".to_string()),
            "[A-Za-z0-9_.\u{e9}-]{1,12}",
        ]
    }

    #[derive(Debug, Clone)]
    enum Entry {
        File(String, Vec<u8>),
        Folder(String, Vec<Entry>),
    }

    fn tree() -> impl Strategy<Value = Vec<Entry>> {
        let file = (
            entry_name(),
            prop_oneof![
                Just(b"3.0000000e+00".to_vec()),
                Just(b"   9e+00\n".to_vec()),
                prop::collection::vec(any::<u8>(), 0..8),
            ],
        )
            .prop_map(|(name, bytes)| Entry::File(name, bytes));
        let entries = file.prop_recursive(4, 24, 5, |inner| {
            (entry_name(), prop::collection::vec(inner, 0..5))
                .prop_map(|(name, children)| Entry::Folder(name, children))
        });
        prop::collection::vec(entries, 0..6)
    }

    fn write_tree(dir: &Path, entries: &[Entry]) {
        for entry in entries {
            match entry {
                Entry::File(name, bytes) => {
                    // A name may come twice; the first kind written wins.
                    let _ = std::fs::write(dir.join(name), bytes);
                }
                Entry::Folder(name, children) => {
                    let folder = dir.join(name);
                    if std::fs::create_dir_all(&folder).is_ok() {
                        write_tree(&folder, children);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

        #[test]
        fn any_folder_tree_is_scanned_or_refused(
            entries in tree(),
            neutral in any::<bool>(),
            strict in any::<bool>(),
            peak in 0usize..4,
        ) {
            let dir = tempfile::tempdir().unwrap();
            write_tree(dir.path(), &entries);
            let options = PrepareOptions {
                neutral,
                strict,
                selection: if peak == 0 { Selection::All } else { Selection::Peak(peak) },
                ..PrepareOptions::default()
            };
            if let Ok(scan) = scan(dir.path(), &options) {
                let n_classes = crate::n_classes(neutral);
                for job in &scan.jobs {
                    prop_assert!(job.image.starts_with(dir.path()), "{:?}", job.image);
                    prop_assert!(job.image.is_file(), "{:?}", job.image);
                    prop_assert!(job.label < n_classes, "label {}", job.label);
                }
            }
        }
    }
}
