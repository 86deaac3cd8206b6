//! The pure science: interpolation, trajectory projection and line metrics.
//!
//! **Architecture invariant:** nothing in here reads files, talks to the network, looks at the
//! clock or knows how results are stored. Inputs are tensors, modules or slices; outputs are
//! numbers. That keeps every formula unit-testable against hand-computed cases.

pub mod directions;
pub mod interp;
pub mod metrics;
pub mod monotone_path;
pub mod projection;

pub use interp::{AlphaGrid, GridError, affine_modules, lerp_modules, lerp_tensor};
pub use metrics::{Barrier, LineShape, alpha_of_min, barrier, ln_k, shape_on_unit_interval};
pub use projection::{Projection, Projector};
