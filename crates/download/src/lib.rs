//! Verified, resumable downloads of CK+ and pretrained DeXpression weights.
//!
//! (Work in progress.)

#![warn(missing_docs)]
