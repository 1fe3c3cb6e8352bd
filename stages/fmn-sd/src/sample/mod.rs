//! Text-to-image sampling: the inference schedulers and the pipeline.
pub mod pipeline;
pub mod scheduler;
