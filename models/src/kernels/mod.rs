//! Hand-written CPU kernels under the models: Intel AMX tile matmuls over GGUF blocks
//! ([`amx`]), causal attention that gives the same result in any pass ([`attention`]), the
//! plain-`f32` BERT forward pass for short texts ([`fastbert`]), and int8 linears for AVX2 CPUs
//! without VNNI ([`int8`]).

pub mod amx;
pub mod attention;
pub mod fastbert;
pub mod int8;
