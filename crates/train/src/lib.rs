//! k-fold training of DeXpression: loop, metrics, history, checkpoints and resume.
//!
//! (Work in progress.)

#![warn(missing_docs)]
