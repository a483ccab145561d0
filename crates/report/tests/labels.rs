//! A history's labels must be classes of its run: a label beyond the classes of the
//! `config.json` beside it, or an absurd one with no configuration, is refused with the file and
//! line, before any confusion matrix is sized from it.

use dexpression_report::{Error, History};

const HEADER: &str = "fold,epoch,avg_train_accuracy,avg_test_accuracy,avg_train_loss,avg_test_loss,test_pred,test_truth";

fn run_folder(rows: &[&str], class_names: Option<&[&str]>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{HEADER}\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(dir.path().join("history.csv"), text).unwrap();
    if let Some(names) = class_names {
        let config = serde_json::json!({ "split": "subject", "class_names": names });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    }
    dir
}

#[test]
fn a_label_beyond_the_configured_classes_is_refused() {
    let names = ["a", "b", "c"];
    let good = run_folder(&["1,1,50,50,0.5,0.5,\"[0, 2]\",\"[2, 1]\""], Some(&names));
    assert_eq!(History::from_run(good.path()).unwrap().records().len(), 1);

    let bad = run_folder(
        &[
            "1,1,50,50,0.5,0.5,\"[0, 2]\",\"[2, 1]\"",
            "1,2,50,50,0.5,0.5,\"[0, 1]\",\"[3, 1]\"",
        ],
        Some(&names),
    );
    let error = History::from_run(bad.path()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::LabelOutOfRange {
                line: 3,
                label: 3,
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("history.csv:3")
            && message.contains("test_truth")
            && message.contains("3 classes (labels 0 to 2)"),
        "{message}"
    );
}

#[test]
fn an_absurd_label_without_a_configuration_is_refused() {
    let dir = run_folder(&["1,1,50,50,0.5,0.5,\"[0, 4000000000]\",\"[0, 1]\""], None);
    let error = History::from_run(dir.path()).unwrap_err();
    assert!(
        error.to_string().contains("label 4000000000")
            && error.to_string().contains("history.csv:2"),
        "{error}"
    );
    // A history with a Neutral class and no configuration still reads.
    let neutral = run_folder(&["1,1,50,50,0.5,0.5,\"[7, 1]\",\"[7, 1]\""], None);
    assert!(History::from_run(neutral.path()).is_ok());
}
