//! Property tests of the parsers of CK+'s small text files: emotion labels, landmarks and file
//! stems. Any text gives an error or a valid value, never a panic.

use dexpression_dataset::testing::{parse_ck_stem, parse_emotion_label, parse_landmarks};
use proptest::prelude::*;

/// Numbers as CK+ and other tools write them, and things that only look like numbers.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|value| format!("{value:e}")),
        any::<f32>().prop_map(|value| value.to_string()),
        any::<i64>().prop_map(|value| value.to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-0".to_string()),
        Just("1e999".to_string()),
        Just("\u{feff}3.0000000e+00".to_string()),
        "[0-9eE+.-]{0,12}",
        "\\PC{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn any_label_text_is_an_error_or_a_known_expression(
        text in prop_oneof![
            number_text(),
            (" {0,4}", number_text(), "[ \n\r\t]{0,3}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        ],
    ) {
        if let Ok(expression) = parse_emotion_label(&text) {
            // Accepted only for a whole code from 0 to 7 that names this expression.
            let value: f64 = text
                .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
                .parse()
                .unwrap();
            prop_assert!(value.fract() == 0.0 && (0.0..=7.0).contains(&value), "{text:?}");
            prop_assert_eq!(
                dexpression_dataset::Expression::from_ck_code(value as u32),
                Some(expression)
            );
        }
    }

    #[test]
    fn any_landmarks_text_is_an_error_or_68_finite_points(
        lines in prop::collection::vec(
            prop_oneof![
                4 => (number_text(), " {1,3}", number_text()).prop_map(|(x, gap, y)| format!("   {x}{gap}{y}")),
                1 => "\\PC{0,20}",
                1 => Just(String::new()),
                1 => (number_text(), number_text(), number_text()).prop_map(|(a, b, c)| format!("{a} {b} {c}")),
            ],
            0..80,
        ),
        newline in prop_oneof![Just("\n"), Just("\r\n")],
    ) {
        let text = lines.join(newline);
        if let Ok(points) = parse_landmarks(&text) {
            prop_assert_eq!(points.len(), 68);
            prop_assert!(points.iter().flatten().all(|value| value.is_finite()));
        }
    }

    #[test]
    fn sixty_eight_good_lines_always_parse(
        points in prop::collection::vec((-1e6f32..1e6, -1e6f32..1e6), 68),
    ) {
        let text: String = points.iter().map(|(x, y)| format!("   {x:e}   {y:e}\n")).collect();
        let parsed = parse_landmarks(&text).unwrap();
        for (got, (x, y)) in parsed.iter().zip(&points) {
            prop_assert_eq!(got, &[*x, *y]);
        }
    }

    #[test]
    fn any_file_stem_is_none_or_its_parts(
        stem in prop_oneof![
            "\\PC{0,30}",
            "[Ss][0-9]{0,4}_[0-9]{0,4}_[0-9]{0,12}(_[a-z]{0,9})?",
            "[Ss\u{e9}\u{1F600}][0-9\u{e9}]{0,3}_[0-9_]{0,6}",
        ],
    ) {
        if let Some(parsed) = parse_ck_stem(&stem) {
            prop_assert!(stem.starts_with(&parsed.sequence), "{stem:?} -> {parsed:?}");
            prop_assert!(parsed.sequence.starts_with(&parsed.subject));
            prop_assert!(parsed.subject[1..].bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
