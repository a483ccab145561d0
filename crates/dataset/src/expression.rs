//! The expression classes, their index order and the names they go by in CK+ and its copies.

use std::fmt;

/// One facial expression class.
///
/// The index order is the label order everywhere (tensors, reports, confusion matrices):
/// 0 Anger, 1 Contempt, 2 Disgust, 3 Fear, 4 Happiness, 5 Sadness, 6 Surprise, and 7 Neutral,
/// which exists only when neutral frames are asked for. CK+ emotion codes 1..=7 map to indices
/// 0..=6 and code 0 (neutral) to 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expression {
    /// CK+ code 1.
    Anger,
    /// CK+ code 2.
    Contempt,
    /// CK+ code 3.
    Disgust,
    /// CK+ code 4.
    Fear,
    /// CK+ code 5 ("happy").
    Happiness,
    /// CK+ code 6.
    Sadness,
    /// CK+ code 7.
    Surprise,
    /// CK+ code 0: the first frame of a sequence, only used with the `neutral` option.
    Neutral,
}

impl Expression {
    /// The seven CK+ emotions without neutral, in index order.
    pub const EMOTIONS: [Expression; 7] = [
        Expression::Anger,
        Expression::Contempt,
        Expression::Disgust,
        Expression::Fear,
        Expression::Happiness,
        Expression::Sadness,
        Expression::Surprise,
    ];

    /// All eight classes in index order: [`Self::EMOTIONS`], then neutral.
    pub const ALL: [Expression; 8] = {
        let mut all = [Expression::Neutral; 8];
        let mut index = 0;
        while index < Self::EMOTIONS.len() {
            all[index] = Self::EMOTIONS[index];
            index += 1;
        }
        all
    };

    /// The class index (0..=7).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class with this index, if any.
    pub fn from_index(index: usize) -> Option<Self> {
        Self::ALL.get(index).copied()
    }

    /// The class of a CK+ `Emotion/*_emotion.txt` code (0 neutral, 1 anger .. 7 surprise).
    pub fn from_ck_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Expression::Neutral),
            1..=7 => Self::from_index(code as usize - 1),
            _ => None,
        }
    }

    /// The CK+ code of this class (inverse of [`Expression::from_ck_code`]).
    pub fn ck_code(self) -> u32 {
        match self {
            Expression::Neutral => 0,
            other => other.index() as u32 + 1,
        }
    }

    /// The display name: "Anger", "Contempt", "Disgust", "Fear", "Happiness", "Sadness",
    /// "Surprise", "Neutral".
    pub fn name(self) -> &'static str {
        match self {
            Expression::Anger => "Anger",
            Expression::Contempt => "Contempt",
            Expression::Disgust => "Disgust",
            Expression::Fear => "Fear",
            Expression::Happiness => "Happiness",
            Expression::Sadness => "Sadness",
            Expression::Surprise => "Surprise",
            Expression::Neutral => "Neutral",
        }
    }

    /// Reads a class name as found in folder-per-class copies of CK+ and other FER sets,
    /// case-insensitively: "anger"/"angry", "contempt", "disgust"/"disgusted", "fear"/"fearful",
    /// "happy"/"happiness", "sad"/"sadness", "surprise"/"surprised", "neutral".
    pub fn parse_name(name: &str) -> Option<Self> {
        let lower = name.trim().to_ascii_lowercase();
        let expression = match lower.as_str() {
            "anger" | "angry" => Expression::Anger,
            "contempt" | "contemptuous" => Expression::Contempt,
            "disgust" | "disgusted" => Expression::Disgust,
            "fear" | "fearful" | "afraid" | "scared" => Expression::Fear,
            "happy" | "happiness" | "joy" => Expression::Happiness,
            "sad" | "sadness" => Expression::Sadness,
            "surprise" | "surprised" => Expression::Surprise,
            "neutral" => Expression::Neutral,
            _ => return None,
        };
        Some(expression)
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The class names in index order: the seven emotions, plus "Neutral" when `neutral` is set.
pub fn class_names(neutral: bool) -> Vec<String> {
    let n_classes = n_classes(neutral);
    Expression::ALL[..n_classes]
        .iter()
        .map(|expression| expression.name().to_string())
        .collect()
}

/// How many classes a dataset has: 7, or 8 with neutral.
pub fn n_classes(neutral: bool) -> usize {
    if neutral {
        8
    } else {
        7
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_codes_and_names_round_trip() {
        for (index, expression) in Expression::ALL.iter().enumerate() {
            assert_eq!(expression.index(), index);
            assert_eq!(Expression::from_index(index), Some(*expression));
            assert_eq!(
                Expression::from_ck_code(expression.ck_code()),
                Some(*expression)
            );
            assert_eq!(Expression::parse_name(expression.name()), Some(*expression));
            assert_eq!(
                Expression::parse_name(&expression.name().to_uppercase()),
                Some(*expression)
            );
        }
        assert_eq!(Expression::from_index(8), None);
        assert_eq!(Expression::from_ck_code(8), None);
        assert_eq!(Expression::from_ck_code(5), Some(Expression::Happiness));
        assert_eq!(Expression::parse_name("Happy"), Some(Expression::Happiness));
        assert_eq!(Expression::parse_name("sad"), Some(Expression::Sadness));
        assert_eq!(Expression::parse_name("angry"), Some(Expression::Anger));
        assert_eq!(
            Expression::parse_name("surprised"),
            Some(Expression::Surprise)
        );
        assert_eq!(Expression::parse_name("cat"), None);
        assert_eq!(class_names(false).len(), 7);
        assert_eq!(class_names(true)[7], "Neutral");
    }
}
