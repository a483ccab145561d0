//! Accuracy and loss curves, confusion matrices and summary tables for DeXpression runs.
//!
//! (Work in progress.)

#![warn(missing_docs)]
