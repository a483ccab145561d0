//! The DeXpression network (work in progress).
