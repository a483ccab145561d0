//! Parsers for the small CK+ text files and file names. They take untrusted text and never
//! panic: every failure is a [`ParseError`] that says what was expected.

use crate::Expression;
use std::fmt;

/// How many AAM landmarks each CK+ `*_landmarks.txt` file holds (the iBUG 68-point scheme).
pub const N_LANDMARKS: usize = 68;

/// Why a label or landmarks file was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// The text is not a number (or not the expected number of numbers).
    NotANumber(String),
    /// The label is a number but not one of the CK+ codes 0..=7.
    LabelOutOfRange(f64),
    /// A landmarks file does not hold exactly 68 points.
    WrongPointCount(usize),
    /// A landmarks line does not hold exactly two coordinates.
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line, shortened.
        text: String,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotANumber(text) => write!(formatter, "not a number: {text:?}"),
            ParseError::LabelOutOfRange(value) => {
                write!(formatter, "label {value} is not a CK+ emotion code (0..=7)")
            }
            ParseError::WrongPointCount(count) => {
                write!(
                    formatter,
                    "{count} landmark points instead of {N_LANDMARKS}"
                )
            }
            ParseError::BadLine { line, text } => {
                write!(formatter, "line {line} is not an `x y` pair: {text:?}")
            }
        }
    }
}

/// Reads an `Emotion/…_emotion.txt` file: one float in scientific notation, possibly with
/// leading spaces and a trailing newline (`   3.0000000e+00`). Codes 0..=7 are accepted
/// (0 = neutral, which the official release never uses); anything else is an error.
pub fn parse_emotion_label(text: &str) -> Result<Expression, ParseError> {
    let trimmed = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let value: f64 = trimmed
        .parse()
        .map_err(|_| ParseError::NotANumber(shorten(trimmed)))?;
    if !value.is_finite() || value.fract() != 0.0 || !(0.0..=7.0).contains(&value) {
        return Err(ParseError::LabelOutOfRange(value));
    }
    Expression::from_ck_code(value as u32).ok_or(ParseError::LabelOutOfRange(value))
}

/// Reads a `Landmarks/…_landmarks.txt` file: 68 lines of `x y` floats (blank lines ignored).
/// Returns the points in file order, or an error when a line is not two finite numbers or the
/// count is not 68.
pub fn parse_landmarks(text: &str) -> Result<Vec<[f32; 2]>, ParseError> {
    let mut points = Vec::with_capacity(N_LANDMARKS);
    for (line_idx, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let (Some(x_text), Some(y_text), None) = (fields.next(), fields.next(), fields.next())
        else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(ParseError::BadLine {
                line: line_idx + 1,
                text: shorten(line),
            });
        };
        let parse = |field: &str| -> Result<f32, ParseError> {
            match field.parse::<f32>() {
                Ok(value) if value.is_finite() => Ok(value),
                _ => Err(ParseError::BadLine {
                    line: line_idx + 1,
                    text: shorten(line),
                }),
            }
        };
        points.push([parse(x_text)?, parse(y_text)?]);
        if points.len() > N_LANDMARKS {
            // Keep counting cheaply without storing a huge file's worth of points.
            let rest = text.lines().skip(line_idx + 1);
            let extra = rest.filter(|line| !line.trim().is_empty()).count();
            return Err(ParseError::WrongPointCount(points.len() + extra));
        }
    }
    if points.len() != N_LANDMARKS {
        return Err(ParseError::WrongPointCount(points.len()));
    }
    Ok(points)
}

/// The parts of a CK+ file stem such as `S010_004_00000017` (optionally followed by a suffix
/// such as `_emotion` or `_landmarks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CkStem {
    /// `S010`.
    pub subject: String,
    /// `S010_004`.
    pub sequence: String,
    /// 17.
    pub frame: u32,
}

/// Splits a CK+ file stem (`S010_004_00000017`, with any suffix after the frame number) into
/// subject, sequence and frame; `None` when the name does not follow that pattern.
pub fn parse_ck_stem(stem: &str) -> Option<CkStem> {
    let mut parts = stem.split('_');
    let subject = parts.next()?;
    let sequence = parts.next()?;
    let frame = parts.next()?;
    let subject_ok = subject.len() >= 2
        && subject.starts_with(['S', 's'])
        && subject[1..].bytes().all(|byte| byte.is_ascii_digit());
    let sequence_ok = !sequence.is_empty() && sequence.bytes().all(|byte| byte.is_ascii_digit());
    let frame_ok =
        !frame.is_empty() && frame.len() <= 9 && frame.bytes().all(|b| b.is_ascii_digit());
    if !(subject_ok && sequence_ok && frame_ok) {
        return None;
    }
    Some(CkStem {
        subject: subject.to_string(),
        sequence: format!("{subject}_{sequence}"),
        frame: frame.parse().ok()?,
    })
}

fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    if text.chars().count() <= MAX_CHARS {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn official_label_format_is_read() {
        assert_eq!(
            parse_emotion_label("   3.0000000e+00\n"),
            Ok(Expression::Disgust)
        );
        assert_eq!(
            parse_emotion_label("7.0000000e+00"),
            Ok(Expression::Surprise)
        );
        assert_eq!(parse_emotion_label("1"), Ok(Expression::Anger));
        assert_eq!(
            parse_emotion_label("0.0000000e+00"),
            Ok(Expression::Neutral)
        );
        assert_eq!(
            parse_emotion_label("8.0000000e+00"),
            Err(ParseError::LabelOutOfRange(8.0))
        );
        assert_eq!(
            parse_emotion_label("2.5"),
            Err(ParseError::LabelOutOfRange(2.5))
        );
        assert_eq!(
            parse_emotion_label("-1e+00"),
            Err(ParseError::LabelOutOfRange(-1.0))
        );
        assert!(matches!(
            parse_emotion_label(""),
            Err(ParseError::NotANumber(_))
        ));
        assert!(matches!(
            parse_emotion_label("NaN"),
            Err(ParseError::LabelOutOfRange(_))
        ));
        assert!(matches!(
            parse_emotion_label("happy"),
            Err(ParseError::NotANumber(_))
        ));
    }

    #[test]
    fn official_landmark_format_is_read() {
        let text: String = (0..68)
            .map(|index| format!("   2.{index:02}84585e+02   4.2256314e+02\n"))
            .collect();
        let points = parse_landmarks(&text).expect("68 well-formed lines");
        assert_eq!(points.len(), 68);
        assert!((points[1][0] - 201.84585).abs() < 1e-3);
        assert!((points[1][1] - 422.56314).abs() < 1e-3);
        let short: String = text
            .lines()
            .take(67)
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            parse_landmarks(&short),
            Err(ParseError::WrongPointCount(67))
        );
        let long = format!("{text}1 2\n3 4\n");
        assert_eq!(parse_landmarks(&long), Err(ParseError::WrongPointCount(70)));
        assert!(matches!(
            parse_landmarks("1 2 3\n"),
            Err(ParseError::BadLine { line: 1, .. })
        ));
        assert!(matches!(
            parse_landmarks("1 inf\n"),
            Err(ParseError::BadLine { .. })
        ));
    }

    #[test]
    fn ck_stems_are_split() {
        assert_eq!(
            parse_ck_stem("S010_004_00000017"),
            Some(CkStem {
                subject: "S010".into(),
                sequence: "S010_004".into(),
                frame: 17
            })
        );
        assert_eq!(
            parse_ck_stem("S005_001_00000011_emotion").map(|s| s.frame),
            Some(11)
        );
        assert_eq!(parse_ck_stem("img_001"), None);
        assert_eq!(parse_ck_stem("S01_x_1"), None);
        assert_eq!(parse_ck_stem("S_001_1"), None);
        assert_eq!(parse_ck_stem("S001_001_99999999999"), None);
    }

    /// Property test: random junk built from the characters these files contain never
    /// panics, and anything accepted is a valid class or exactly 68 finite points.
    #[test]
    fn parsers_never_panic_on_junk() {
        const ALPHABET: &[&str] = &[
            "0",
            "1",
            "3",
            "7",
            "8",
            ".",
            "e",
            "E",
            "+",
            "-",
            " ",
            "\t",
            "\n",
            "\r\n",
            "nan",
            "inf",
            "x",
            "é",
            "\u{feff}",
            "0000000e+00",
            "   2.1384585e+02   2.4256314e+02\n",
            "1e39",
            "_",
            "S",
            "\0",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20_000 {
            let n_pieces = rng.random_range(0..12);
            let junk: String = (0..n_pieces)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            if let Ok(expression) = parse_emotion_label(&junk) {
                assert!(expression.index() < 8);
            }
            if let Ok(points) = parse_landmarks(&junk) {
                assert_eq!(points.len(), N_LANDMARKS);
            }
            let _ = parse_ck_stem(&junk);
        }
        // Near-valid landmark files: 68 good lines with one line damaged at random.
        let good: Vec<String> = (0..68).map(|i| format!("{i}.5 {i}.25")).collect();
        for _ in 0..2_000 {
            let mut lines = good.clone();
            let victim = rng.random_range(0..lines.len());
            let piece = ALPHABET[rng.random_range(0..ALPHABET.len())];
            let cut = rng.random_range(0..=lines[victim].len());
            lines[victim].insert_str(cut, piece);
            let text = lines.join("\n");
            if let Ok(points) = parse_landmarks(&text) {
                assert_eq!(points.len(), N_LANDMARKS);
                assert!(points.iter().all(|p| p[0].is_finite() && p[1].is_finite()));
            }
        }
    }
}
