//! Hand-written CPU kernels under the models: Intel AMX tile matmuls over GGUF blocks
//! ([`amx`]), causal attention that gives the same result in any pass ([`attention`]), and the
//! plain-`f32` BERT forward pass for short texts ([`fastbert`]).

pub mod amx;
pub mod attention;
pub mod fastbert;
