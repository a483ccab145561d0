//! CK+ (Extended Cohn-Kanade) parsing, face cropping, caching and subject-independent folds for facial expression recognition.
//!
//! (Work in progress.)

#![warn(missing_docs)]
