//! The pure science: interpolation, trajectory projection and line metrics.
//!
//! **Architecture invariant:** nothing in here reads files, talks to the network, looks at the
//! clock or knows how results are stored. Inputs are tensors, modules or slices; outputs are
//! numbers. That keeps every formula unit-testable against hand-computed cases.

pub mod interp;
pub mod metrics;
pub mod projection;

pub use interp::{AlphaGrid, GridError, lerp_modules, lerp_tensor};
pub use metrics::{LineShape, alpha_of_min, ln_k, shape_on_unit_interval};
pub use projection::{Projection, Projector};
