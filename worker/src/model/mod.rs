//! Models, as burn modules whose snapshot names and layouts match a PyTorch module of the same
//! architecture (see `docs/results.md` for the PyTorch class).
//!
//! **Architecture invariant:** models know nothing about data files, storage or the science.

pub mod mlp;

pub use mlp::Mlp;
